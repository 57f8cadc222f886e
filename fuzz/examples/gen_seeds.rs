//! Writes the committed seed corpora, `fuzz/seeds/frame/` and `fuzz/seeds/message/`: one real
//! message of every kind ([`canopy_fuzz::sample_messages`]), encoded by `wire`, in each target's
//! input format (a mode byte first; see the targets' docs).
//!
//! Run from `fuzz/`: `cargo run --example gen-seeds` (rewrites the files; they are deterministic).

use std::fs;
use std::path::Path;

use wire::frame::{decode_frame, HEADER_LEN};

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let frame_dir = root.join("frame");
    let message_dir = root.join("message");
    fs::create_dir_all(&frame_dir)?;
    fs::create_dir_all(&message_dir)?;
    let mut written = 0;
    for msg in canopy_fuzz::sample_messages() {
        let mut framed = Vec::new();
        wire::encode(&msg, &mut framed);
        let kind = msg.kind().to_lowercase();
        // Both targets, mode 0: the frame as it travels.
        for dir in [&frame_dir, &message_dir] {
            let name = match &msg {
                wire::Message::Hello(h) => format!("{kind}-{:?}", h.role).to_lowercase(),
                wire::Message::Query(q) if q.hops > 0 => format!("{kind}-relayed"),
                _ => kind.clone(),
            };
            if dir == &frame_dir && !matches!(kind.as_str(), "ping" | "chunk" | "manifest") {
                continue;
            }
            let mut seed = vec![0u8];
            seed.extend_from_slice(&framed);
            fs::write(dir.join(format!("raw-{name}")), &seed)?;
            written += 1;
            if dir == &message_dir {
                // Mode 1: body length, body, payload; the target seals the frame itself.
                let (frame, _) = decode_frame(&framed).unwrap().unwrap();
                let mut seed = vec![1u8];
                seed.extend_from_slice(&(frame.body.len() as u16).to_be_bytes());
                seed.extend_from_slice(frame.body);
                seed.extend_from_slice(frame.payload);
                fs::write(dir.join(format!("parts-{name}")), &seed)?;
                written += 1;
            }
        }
    }
    // A stream of two frames, and a header cut short.
    let mut two = vec![0u8];
    wire::encode(&wire::Message::Ping { nonce: 1 }, &mut two);
    wire::encode(&wire::Message::Pong { nonce: 1 }, &mut two);
    fs::write(frame_dir.join("raw-two-frames"), &two)?;
    fs::write(frame_dir.join("raw-short-header"), &two[..HEADER_LEN - 2])?;
    written += 2;
    println!("wrote {written} seeds under {}", root.display());
    Ok(())
}
