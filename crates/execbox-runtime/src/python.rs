//! The Python runtime: a uv-made virtual environment (numpy, pandas) over an interpreter the
//! sandbox uid can reach, bound read-only into the jail at the same path.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use execbox_jail::{BindMount, JailSpec, Limits, Payload, WorkFile};
use execbox_proto::Mode;

/// The harness, run with `python3 -I -u -B -c`.
pub const HARNESS: &str = include_str!("../../../runtimes/python/harness.py");

/// The warm path's template program (`runtimes/python/template.py`).
pub const TEMPLATE: &str = include_str!("../../../runtimes/python/template.py");

/// Name of the user's script in the work dir.
pub const SCRIPT_NAME: &str = "main.py";

/// Why the runtime cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The environment is missing or broken.
    #[error("python environment at {path}: {reason} (run `make runtime` to create it)")]
    Env {
        /// Environment prefix.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A path the jail needs cannot be traversed by an unprivileged uid.
    #[error("{path} is not reachable by the sandbox uid (a parent directory lacks o+x); install the runtime under a traversable path such as /opt/execbox")]
    Unreachable {
        /// The first unreachable directory.
        path: PathBuf,
    },
}

/// A discovered Python environment.
#[derive(Debug, Clone)]
pub struct PythonRuntime {
    /// The venv prefix.
    pub prefix: PathBuf,
    /// Interpreter path inside the venv (used as `argv[0]` inside the jail).
    pub python: PathBuf,
    /// Interpreter version, e.g. `3.11.2`.
    pub version: String,
    /// The base interpreter's prefix when it is outside `/usr` (then bound too).
    pub base_prefix: Option<PathBuf>,
}

impl PythonRuntime {
    /// Inspect the venv at `prefix` (reads `pyvenv.cfg`; runs nothing).
    pub fn discover(prefix: &Path) -> Result<Self, RuntimeError> {
        let env_err = |reason: String| RuntimeError::Env {
            path: prefix.to_path_buf(),
            reason,
        };
        let cfg_path = prefix.join("pyvenv.cfg");
        let cfg = fs::read_to_string(&cfg_path)
            .map_err(|e| env_err(format!("cannot read pyvenv.cfg: {e}")))?;
        let get = |key: &str| {
            cfg.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == key).then(|| v.trim().to_owned())
            })
        };
        let version = get("version_info")
            .or_else(|| get("version"))
            .ok_or_else(|| env_err("pyvenv.cfg has no version".into()))?;
        let home =
            PathBuf::from(get("home").ok_or_else(|| env_err("pyvenv.cfg has no home".into()))?);
        let python = prefix.join("bin/python3");
        let real = fs::canonicalize(&python)
            .map_err(|e| env_err(format!("{} does not resolve: {e}", python.display())))?;
        // Everything the interpreter needs must be reachable by an unprivileged uid.
        for p in [prefix, real.as_path(), home.as_path()] {
            check_reachable(p)?;
        }
        let base_prefix = home
            .parent()
            .filter(|b| !b.starts_with("/usr"))
            .map(Path::to_path_buf);
        if !real.starts_with("/usr") && base_prefix.as_ref().is_none_or(|b| !real.starts_with(b)) {
            return Err(env_err(format!(
                "interpreter {} is outside /usr and the venv home",
                real.display()
            )));
        }
        Ok(Self {
            prefix: prefix.to_path_buf(),
            python,
            version: version
                .split(['.', ' '])
                .take(3)
                .collect::<Vec<_>>()
                .join("."),
            base_prefix,
        })
    }

    /// The jail for this runtime with `limits`.
    pub fn jail_spec(&self, limits: Limits) -> JailSpec {
        let mut binds = vec![BindMount::same(&self.prefix)];
        if let Some(b) = &self.base_prefix {
            binds.push(BindMount::same(b));
        }
        JailSpec { binds, limits }
    }

    /// The payload that runs `source` (as `main.py`) in `mode`.
    pub fn payload(&self, source: Vec<u8>, mode: Mode, stdin: Vec<u8>, args: &[String]) -> Payload {
        let files = vec![WorkFile {
            name: SCRIPT_NAME.into(),
            content: source,
        }];
        self.payload_files(files, mode, stdin, args)
    }

    /// The payload that runs `files` in `mode`; the first file is the entry point.
    pub fn payload_files(
        &self,
        files: Vec<WorkFile>,
        mode: Mode,
        stdin: Vec<u8>,
        args: &[String],
    ) -> Payload {
        let entry = files
            .first()
            .map_or(SCRIPT_NAME, |f| f.name.as_str())
            .to_owned();
        let mut argv = vec![
            self.python.display().to_string(),
            "-I".into(), // isolated: no PYTHON* env, no user site, no script dir on sys.path
            "-u".into(), // unbuffered: what was printed before a kill is kept
            "-B".into(), // no .pyc writes (the env is read-only anyway)
            "-c".into(),
            HARNESS.into(),
            mode.as_str().into(),
            entry,
        ];
        argv.extend(args.iter().cloned());
        let env = vec![
            format!(
                "PATH={}/bin:/usr/local/bin:/usr/bin:/bin",
                self.prefix.display()
            ),
            "HOME=/tmp".into(),
            "TMPDIR=/tmp".into(),
            "LANG=C.UTF-8".into(),
            "LC_ALL=C.UTF-8".into(),
            "OPENBLAS_NUM_THREADS=1".into(),
            "OMP_NUM_THREADS=1".into(),
            "MKL_NUM_THREADS=1".into(),
            "MPLCONFIGDIR=/tmp".into(),
        ];
        Payload {
            argv,
            env,
            files,
            stdin,
        }
    }
}

/// Every directory from `/` down to `p` must be searchable by "other" (the sandbox uid owns
/// nothing on the host), and `p` itself readable.
fn check_reachable(p: &Path) -> Result<(), RuntimeError> {
    let mut cur = PathBuf::from("/");
    for comp in p.components().skip(1) {
        let meta =
            fs::metadata(&cur).map_err(|_| RuntimeError::Unreachable { path: cur.clone() })?;
        if meta.is_dir() && meta.permissions().mode() & 0o001 == 0 {
            return Err(RuntimeError::Unreachable { path: cur });
        }
        cur.push(comp);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_0700_parent_is_unreachable() {
        let t = tempfile::tempdir().unwrap();
        let inner = t.path().join("inner");
        fs::create_dir(&inner).unwrap();
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let e = check_reachable(&inner).unwrap_err();
        assert!(
            matches!(e, RuntimeError::Unreachable { ref path } if path == t.path()),
            "{e}"
        );
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
        // tempdir's own parents (/tmp) are traversable
        check_reachable(&inner).unwrap();
    }

    #[test]
    fn discover_reads_pyvenv_cfg() {
        let t = tempfile::tempdir().unwrap();
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let prefix = t.path().join("env");
        fs::create_dir_all(prefix.join("bin")).unwrap();
        fs::write(
            prefix.join("pyvenv.cfg"),
            "home = /usr/bin\nimplementation = CPython\nversion_info = 3.11.2\n",
        )
        .unwrap();
        let py = fs::canonicalize("/bin/sh").unwrap(); // any /usr binary stands in
        std::os::unix::fs::symlink(&py, prefix.join("bin/python3")).unwrap();
        let rt = PythonRuntime::discover(&prefix).unwrap();
        assert_eq!(rt.version, "3.11.2");
        assert!(rt.base_prefix.is_none());
        let spec = rt.jail_spec(Limits::default());
        assert_eq!(spec.binds, vec![BindMount::same(&prefix)]);
        let p = rt.payload(b"x".to_vec(), Mode::Main, vec![], &[]);
        assert_eq!(p.argv[0], prefix.join("bin/python3").display().to_string());
        assert!(p.env.iter().all(|e| !e.starts_with("APP_")));
        assert!(p.validate(&Limits::default()).is_ok());

        fs::write(prefix.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        assert!(PythonRuntime::discover(&prefix).is_err());
        assert!(PythonRuntime::discover(&t.path().join("missing")).is_err());
    }
}
