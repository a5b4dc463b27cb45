//! Files a run returns from `/work/out`: the run wrapper (in the jail, after the program
//! exited) writes a tar of the folder to the result channel, cut at a byte cap; this module
//! reads it on the host, trusting nothing in it: every entry must be a plain file directly
//! in the folder with a valid name, and the number and total size are capped.

use base64::Engine;
use execbox_proto::{validate_file_name, ErrorBody, ErrorCode, OutputFile};

const BLOCK: usize = 512;

/// The caps on the files one run returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilesCap {
    /// Most files.
    pub files: usize,
    /// Most bytes, all files together.
    pub bytes: u64,
}

impl FilesCap {
    /// The most bytes the wrapper writes to the channel: the files, plus room for the tar
    /// headers of as many files (a pax header and a file header each, with data blocks) and
    /// the end of the archive. An archive cut at this size is over a cap.
    pub fn channel_bytes(&self) -> u64 {
        self.bytes
            .saturating_add((self.files as u64 + 2).saturating_mul(6 * BLOCK as u64))
            .saturating_add(20 * BLOCK as u64)
    }
}

fn limit(cap: &FilesCap, what: String) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::OutputFilesLimit,
        format!(
            "{what}; a run may return at most {} files and {} bytes from /work/out",
            cap.files, cap.bytes
        ),
    )
}

fn invalid(what: String) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::InvalidOutputFile,
        format!(
            "{what}; only plain files directly under /work/out, with plain names, are returned"
        ),
    )
}

fn octal(field: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// The `path` of a pax extended header's records (`"<len> key=value\n"`…).
fn pax_path(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut path = None;
    while !data.is_empty() {
        let sp = data.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&data[..sp]).ok()?.parse().ok()?;
        if len <= sp || len > data.len() {
            return None;
        }
        let rec = &data[sp + 1..len];
        let rec = rec.strip_suffix(b"\n")?;
        if let Some(v) = rec.strip_prefix(b"path=") {
            path = Some(v.to_vec());
        }
        data = &data[len..];
    }
    path
}

/// Read the archive the run wrapper wrote, cut at `cut_at` bytes (at most
/// [`FilesCap::channel_bytes`]): the files, sorted by name, or the error that ends the run
/// (`output_files_limit`, `invalid_output_file`). An empty channel is no files.
pub fn read_files(
    archive: &[u8],
    cap: &FilesCap,
    cut_at: u64,
) -> Result<Vec<OutputFile>, ErrorBody> {
    let mut files: Vec<OutputFile> = Vec::new();
    let mut total = 0u64;
    let mut off = 0usize;
    let mut long_name: Option<Vec<u8>> = None;
    let cut = archive.len() as u64 >= cut_at;
    let truncated = || {
        if cut {
            limit(cap, "the files under /work/out are too large".to_owned())
        } else {
            invalid("the archive of /work/out is damaged".to_owned())
        }
    };
    if archive.is_empty() {
        return Ok(files);
    }
    loop {
        let Some(h) = archive.get(off..off + BLOCK) else {
            return Err(truncated());
        };
        if h.iter().all(|&b| b == 0) {
            break; // end of archive
        }
        let size = octal(&h[124..136]).ok_or_else(truncated)?;
        let kind = h[156];
        let data_start = off + BLOCK;
        let padded = size.div_ceil(BLOCK as u64).saturating_mul(BLOCK as u64);
        let data_end = usize::try_from(data_start as u64 + size).map_err(|_| truncated())?;
        let next = usize::try_from(data_start as u64 + padded).map_err(|_| truncated())?;
        let data = archive.get(data_start..data_end);
        match kind {
            b'x' => {
                long_name = pax_path(data.ok_or_else(truncated)?);
                off = next;
                continue;
            }
            b'g' => {
                off = next;
                continue;
            }
            _ => {}
        }
        let name = match long_name.take() {
            Some(n) => n,
            None => {
                let mut n = Vec::new();
                let prefix = cstr(&h[345..500]);
                if &h[257..262] == b"ustar" && !prefix.is_empty() {
                    n.extend_from_slice(prefix);
                    n.push(b'/');
                }
                n.extend_from_slice(cstr(&h[..100]));
                n
            }
        };
        let name = String::from_utf8_lossy(&name).into_owned();
        let rel = name.strip_prefix("./").unwrap_or(&name);
        let rel = rel.trim_end_matches('/');
        if kind == b'5' && (rel.is_empty() || rel == ".") {
            off = next;
            continue; // the folder itself
        }
        if kind != b'0' && kind != 0 {
            return Err(invalid(format!("{rel:?} is not a plain file")));
        }
        validate_file_name(rel).map_err(|e| invalid(format!("output file: {e}")))?;
        if files.len() == cap.files {
            return Err(limit(
                cap,
                format!("the run wrote more than {} files", cap.files),
            ));
        }
        total = total.saturating_add(size);
        if total > cap.bytes {
            return Err(limit(
                cap,
                format!("the files under /work/out are over {} bytes", cap.bytes),
            ));
        }
        let data = data.ok_or_else(truncated)?;
        files.push(OutputFile {
            name: rel.to_owned(),
            content_base64: base64::engine::general_purpose::STANDARD.encode(data),
            size,
        });
        off = next;
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn tar_of(dir: &std::path::Path) -> Vec<u8> {
        let out = Command::new("tar")
            .args(["--format=pax", "-cf", "-", "-C"])
            .arg(dir)
            .arg(".")
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    }

    const CAP: FilesCap = FilesCap {
        files: 3,
        bytes: 4096,
    };

    #[test]
    fn plain_files_come_back_and_the_rest_is_refused() {
        let t = tempfile::tempdir().unwrap();
        assert!(read_files(&tar_of(t.path()), &CAP, CAP.channel_bytes())
            .unwrap()
            .is_empty());
        assert!(read_files(b"", &CAP, CAP.channel_bytes())
            .unwrap()
            .is_empty());
        std::fs::write(t.path().join("b.csv"), "x,y\n1,2\n").unwrap();
        let long = "l".repeat(200);
        std::fs::write(t.path().join(&long), [0u8, 255, 1]).unwrap();
        let f = read_files(&tar_of(t.path()), &CAP, CAP.channel_bytes()).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].name, "b.csv");
        assert_eq!(f[0].content_base64, "eCx5CjEsMgo=");
        assert_eq!((f[1].name.as_str(), f[1].size), (long.as_str(), 3));

        std::fs::write(t.path().join("c"), "").unwrap();
        std::fs::write(t.path().join("d"), "").unwrap();
        let e = read_files(&tar_of(t.path()), &CAP, CAP.channel_bytes()).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutputFilesLimit);
        assert!(e.message.contains("more than 3 files"), "{}", e.message);

        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("big"), vec![b'x'; 5000]).unwrap();
        let e = read_files(&tar_of(t.path()), &CAP, CAP.channel_bytes()).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutputFilesLimit);
        assert!(e.message.contains("4096 bytes"), "{}", e.message);
        // Cut at the channel cap: over the limit, not damaged.
        let mut cut = tar_of(t.path());
        cut.truncate(100);
        let small = FilesCap { files: 1, bytes: 0 };
        assert_eq!(
            read_files(&cut, &small, small.channel_bytes())
                .unwrap_err()
                .code,
            ErrorCode::InvalidOutputFile
        );
        assert_eq!(
            read_files(&cut, &small, 100).unwrap_err().code,
            ErrorCode::OutputFilesLimit
        );

        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("sub")).unwrap();
        let e = read_files(&tar_of(t.path()), &CAP, CAP.channel_bytes()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidOutputFile);
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a\nb"), "").unwrap();
        let e = read_files(&tar_of(t.path()), &CAP, CAP.channel_bytes()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidOutputFile);
        let t = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("l")).unwrap();
        let e = read_files(&tar_of(t.path()), &CAP, CAP.channel_bytes()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidOutputFile);
        assert_eq!(
            read_files(&[1u8; 700], &CAP, CAP.channel_bytes())
                .unwrap_err()
                .code,
            ErrorCode::InvalidOutputFile
        );
    }
}
