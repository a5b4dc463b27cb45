//! The message the parent sends a prepared child to start the payload:
//! `u32 header length (LE) | header JSON | file contents, back to back`.
//! File bodies travel raw so large files cost no encoding.

use std::io::Read;

use crate::child_error::{ChildError, Step, StepContext};

use serde::{Deserialize, Serialize};

use crate::config::{Payload, WorkFile, MAX_FILES};

/// Largest header accepted by the child (argv, env and file names).
const MAX_HEADER: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    argv: Vec<String>,
    env: Vec<String>,
    files: Vec<(String, u64)>,
}

/// Encode `p` (without stdin, which travels over the stdin pipe).
pub fn encode(p: &Payload) -> Vec<u8> {
    let header = Header {
        argv: p.argv.clone(),
        env: p.env.clone(),
        files: p
            .files
            .iter()
            .map(|f| (f.name.clone(), f.content.len() as u64))
            .collect(),
    };
    // Serialising plain strings and integers cannot fail.
    let h = serde_json::to_vec(&header).unwrap_or_default();
    let body: usize = p.files.iter().map(|f| f.content.len()).sum();
    let mut out = Vec::with_capacity(4 + h.len() + body);
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    for f in &p.files {
        out.extend_from_slice(&f.content);
    }
    out
}

/// Decode a message from `r`; `max_file` bounds each file body.
pub fn decode(r: &mut impl Read, max_file: u64) -> Result<Payload, ChildError> {
    const S: Step = Step::LaunchMessage;
    let mut len = [0u8; 4];
    r.read_exact(&mut len).step(S, || "header length".into())?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_HEADER {
        return Err(ChildError::new(S, format!("header of {len} bytes")));
    }
    let mut h = vec![0u8; len];
    r.read_exact(&mut h).step(S, || "header".into())?;
    let h: Header =
        serde_json::from_slice(&h).map_err(|e| ChildError::new(S, format!("parse header: {e}")))?;
    if h.files.len() > MAX_FILES {
        return Err(ChildError::new(S, "too many files"));
    }
    let mut files = Vec::with_capacity(h.files.len());
    for (name, size) in h.files {
        if size > max_file {
            return Err(ChildError::new(S, format!("file {name:?} of {size} bytes")));
        }
        let mut content = vec![0u8; size as usize];
        r.read_exact(&mut content)
            .step(S, || format!("file {name:?}"))?;
        files.push(WorkFile { name, content });
    }
    Ok(Payload {
        argv: h.argv,
        env: h.env,
        files,
        stdin: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = Payload {
            argv: vec!["/usr/bin/python3".into(), "-c".into(), "pass".into()],
            env: vec!["A=b".into()],
            files: vec![
                WorkFile {
                    name: "main.py".into(),
                    content: b"print(1)\n".to_vec(),
                },
                WorkFile {
                    name: "data.bin".into(),
                    content: vec![0, 255, 10],
                },
            ],
            stdin: vec![],
        };
        let bytes = encode(&p);
        let back = decode(&mut bytes.as_slice(), 1 << 20).unwrap();
        assert_eq!(back, p);
        assert!(decode(&mut &bytes[..bytes.len() - 1], 1 << 20).is_err());
        assert!(decode(&mut bytes.as_slice(), 2).is_err());
    }
}
