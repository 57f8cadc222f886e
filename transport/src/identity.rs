//! A node's persistent identity: a static key pair kept in its data directory, and the node id
//! derived from its public key.

use std::fs;
use std::io;
use std::path::Path;

use wire::NodeId;

/// The file in a data directory that holds the node's static key pair (hex, owner-only).
pub const NODE_KEY_FILE: &str = "node-key";
/// The first line of [`NODE_KEY_FILE`].
const KEY_FILE_HEADER: &str = "canopy node key v1";

/// The platform's data directory for Canopy (`~/.local/share/canopy` on Linux), or `None`
/// where there is no home directory. Leaves use it as it is; a dedicated super-peer uses its
/// `superpeer` subfolder.
pub fn default_data_dir() -> Option<std::path::PathBuf> {
    directories::ProjectDirs::from("", "", "canopy").map(|d| d.data_dir().to_path_buf())
}

/// A node's static X25519 key pair, the key of its Noise handshakes. Its node id is derived
/// from the public key ([`node_id_of`]), so no other node can claim it.
#[derive(Clone)]
pub struct Identity {
    private: [u8; 32],
    public: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        write!(f, "Identity({})", self.node().short())
    }
}

impl Identity {
    /// A fresh random key pair.
    pub fn generate() -> Self {
        Self::from_private(rand::random())
    }

    /// The pair of a private key.
    pub fn from_private(private: [u8; 32]) -> Self {
        use snow::resolvers::{CryptoResolver, DefaultResolver};
        let mut dh = DefaultResolver
            .resolve_dh(&snow::params::DHChoice::Curve25519)
            .expect("snow's default resolver has Curve25519");
        dh.set(&private);
        let mut public = [0; 32];
        public.copy_from_slice(dh.pubkey());
        Identity { private, public }
    }

    /// The private key (for the handshake).
    pub fn private(&self) -> &[u8; 32] {
        &self.private
    }

    /// The public key.
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// The node id: derived from the public key.
    pub fn node(&self) -> NodeId {
        node_id_of(&self.public)
    }

    /// Reads the key pair from `dir`, creating the directory and a fresh pair if there is none.
    /// A damaged file (unreadable, or a public key that does not match the private one) is
    /// reported and replaced by a fresh pair: a new identity, never a reason not to start.
    pub fn load_or_create(dir: &Path) -> io::Result<Identity> {
        fs::create_dir_all(dir)?;
        let path = dir.join(NODE_KEY_FILE);
        match read_private(&path) {
            Ok(text) => match Self::parse(&text) {
                Ok(id) => return Ok(id),
                Err(why) => {
                    log::warn!("{}: damaged ({why}); making a new key pair", path.display())
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let id = Identity::generate();
        let text = format!(
            "{KEY_FILE_HEADER}\nprivate {}\npublic {}\n",
            hex::encode(id.private),
            hex::encode(id.public)
        );
        // Created 0600: the key is never readable by others, not even for a moment.
        write_atomically(&path, text.as_bytes())?;
        Ok(id)
    }

    fn parse(text: &str) -> Result<Identity, &'static str> {
        let mut lines = text.lines();
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err("not a Canopy key file");
        }
        let mut field = |name: &str| -> Result<[u8; 32], &'static str> {
            let line = lines.next().ok_or("too short")?;
            let value = line
                .strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .ok_or("unexpected line")?;
            let mut key = [0; 32];
            hex::decode_to_slice(value.trim(), &mut key).map_err(|_| "not a 32-byte hex key")?;
            Ok(key)
        };
        let private = field("private")?;
        let public = field("public")?;
        let id = Identity::from_private(private);
        if id.public != public {
            return Err("the public key does not match the private key");
        }
        Ok(id)
    }
}

/// Reads the key file, refusing one that others may read or write (as ssh does): its key may
/// have been copied, or replaced by someone else's.
fn read_private(path: &Path) -> io::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let file = fs::File::open(path)?;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is open to other users (mode {:o}); if the key is still yours, \
                 `chmod 600` it, or remove it to make a new identity",
                path.display(),
                mode & 0o777
            ),
        ));
    }
    io::read_to_string(file)
}

/// The node id of a public key: its BLAKE3 hash.
pub fn node_id_of(public: &[u8]) -> NodeId {
    NodeId(*blake3::hash(public).as_bytes())
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash leaves either the
/// old content or the new, never a torn file.
///
/// The file is private to the user (mode 0600) from its creation. The temporary file is
/// created afresh under a random name, never through a link: in a folder others can write to,
/// a planted symlink or file of that name makes the write fail rather than land elsewhere.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp{:016x}", rand::random::<u64>()));
    let mut f = create_private(&tmp)?;
    let result = (|| {
        io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `path`, which must not exist (not even as a dangling symlink), readable and
/// writable by the user alone.
pub fn create_private(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_and_damage_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.node(), node_id_of(a.public()));
        let again = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(again.node(), a.node());
        assert_eq!(again.private(), a.private());
        let path = dir.path().join(NODE_KEY_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(
                mode & 0o077,
                0,
                "the key file is readable by others: {mode:o}"
            );
        }
        // A flipped digit in the public key: detected, replaced.
        let text = fs::read_to_string(&path).unwrap();
        let public_line = text.lines().nth(2).unwrap().to_string();
        let last = public_line.chars().last().unwrap();
        let flipped = format!(
            "{}{}",
            &public_line[..public_line.len() - 1],
            if last == '0' { '1' } else { '0' }
        );
        fs::write(&path, text.replace(&public_line, &flipped)).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_ne!(a.node(), b.node());
        assert_eq!(
            Identity::load_or_create(dir.path()).unwrap().node(),
            b.node()
        );
        fs::write(&path, "garbage").unwrap();
        let c = Identity::load_or_create(dir.path()).unwrap();
        assert_ne!(c.node(), b.node());
    }

    #[test]
    fn a_key_file_open_to_others_is_refused_and_files_are_never_written_through_links() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(NODE_KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = Identity::load_or_create(dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("node-key"), "{e}");
        assert!(e.to_string().contains("644"), "{e}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            Identity::load_or_create(dir.path()).unwrap().node(),
            a.node()
        );

        // A planted link where a file is to be created: refused, the target untouched.
        let victim = dir.path().join("victim");
        fs::write(&victim, b"mine").unwrap();
        let link = dir.path().join("new");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(create_private(&link).is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"mine");
        // A dangling one too: nothing is created at its target.
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &dangling).unwrap();
        assert!(create_private(&dangling).is_err());
        assert!(!dir.path().join("elsewhere").exists());
        // write_atomically replaces the link itself, never writes through it.
        write_atomically(&link, b"data").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"mine");
        assert_eq!(fs::read(&link).unwrap(), b"data");
        let mode = fs::metadata(&link).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    #[test]
    fn public_key_matches_a_known_x25519_vector() {
        // RFC 7748, section 6.1: Alice's key pair.
        let mut private = [0; 32];
        hex::decode_to_slice(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
            &mut private,
        )
        .unwrap();
        let id = Identity::from_private(private);
        assert_eq!(
            hex::encode(id.public()),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }
}
