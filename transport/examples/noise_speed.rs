//! How fast each Noise cipher suite Canopy could use encrypts and decrypts on this machine, in
//! one thread: `cargo run --release -p transport --example noise_speed`. It picked the suite in
//! `transport::secure::NOISE_PARAMS` (see that module's docs).

use std::time::Instant;

fn main() {
    let total: usize = 512 << 20;
    for params in [
        "Noise_XX_25519_ChaChaPoly_BLAKE2s",
        "Noise_XX_25519_AESGCM_BLAKE2s",
    ] {
        let p: snow::params::NoiseParams = params.parse().expect("valid Noise parameters");
        let a = snow::Builder::new(p.clone());
        let ka = a.generate_keypair().expect("a key pair");
        let kb = snow::Builder::new(p.clone())
            .generate_keypair()
            .expect("a key pair");
        let mut i = snow::Builder::new(p.clone())
            .local_private_key(&ka.private)
            .expect("key")
            .build_initiator()
            .expect("initiator");
        let mut r = snow::Builder::new(p)
            .local_private_key(&kb.private)
            .expect("key")
            .build_responder()
            .expect("responder");
        let (mut m, mut out) = (vec![0u8; 65535], vec![0u8; 65535]);
        let n = i.write_message(&[], &mut m).expect("-> e");
        r.read_message(&m[..n], &mut out).expect("read e");
        let n = r.write_message(&[], &mut m).expect("<- e, ee, s, es");
        i.read_message(&m[..n], &mut out).expect("read");
        let n = i.write_message(&[], &mut m).expect("-> s, se");
        r.read_message(&m[..n], &mut out).expect("read");
        let i = i.into_stateless_transport_mode().expect("transport");
        let r = r.into_stateless_transport_mode().expect("transport");
        let plain = vec![7u8; 65535 - 16];
        let started = Instant::now();
        let mut nonce = 0;
        let mut done = 0;
        while done < total {
            let n = i.write_message(nonce, &plain, &mut m).expect("encrypt");
            r.read_message(nonce, &m[..n], &mut out).expect("decrypt");
            nonce += 1;
            done += plain.len();
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{params}: encrypt + decrypt {:.0} MB/s on one thread",
            done as f64 / secs / 1e6
        );
    }
}
