//! A node's persistent identity: a random node id kept in its data directory.

use std::fs;
use std::io;
use std::path::Path;

use wire::NodeId;

/// The file in a data directory that holds the node id (hex).
pub const NODE_ID_FILE: &str = "node-id";

/// The platform's data directory for Canopy (`~/.local/share/canopy` on Linux), or `None`
/// where there is no home directory. Leaves use it as it is; a dedicated super-peer uses its
/// `superpeer` subfolder.
pub fn default_data_dir() -> Option<std::path::PathBuf> {
    directories::ProjectDirs::from("", "", "canopy").map(|d| d.data_dir().to_path_buf())
}

/// A fresh random node id.
pub fn random_node_id() -> NodeId {
    NodeId(rand::random())
}

/// Reads the node id from `dir`, creating the directory and a fresh id if there is none. A
/// damaged file is replaced (logged), never a reason not to start.
pub fn load_or_create_node_id(dir: &Path) -> io::Result<NodeId> {
    fs::create_dir_all(dir)?;
    let path = dir.join(NODE_ID_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse() {
            Ok(id) => return Ok(id),
            Err(e) => log::warn!("{}: {e}; making a new node id", path.display()),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = random_node_id();
    write_atomically(&path, format!("{id}\n").as_bytes())?;
    Ok(id)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash leaves either the
/// old content or the new, never a torn file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_persists_and_damage_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_node_id(dir.path()).unwrap();
        assert_eq!(load_or_create_node_id(dir.path()).unwrap(), a);
        fs::write(dir.path().join(NODE_ID_FILE), "garbage").unwrap();
        let b = load_or_create_node_id(dir.path()).unwrap();
        assert_ne!(a, b);
        assert_eq!(load_or_create_node_id(dir.path()).unwrap(), b);
    }
}
