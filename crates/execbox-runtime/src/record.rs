//! From a jail outcome to the run record every API returns.

use execbox_jail::{Limit, Limits, Outcome};
use execbox_proto::ErrorCode;
use execbox_proto::{now_rfc3339, ErrorBody, LimitKind, Mode, RunRecord, RunStatus, StepReport};
use serde::Deserialize;
use serde_json::Value;

/// What the harness writes on the result channel.
#[derive(Debug, Deserialize)]
struct ChannelMsg {
    ok: bool,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Identity of a run, for the record.
#[derive(Debug, Clone)]
pub struct RunMeta {
    /// Run id.
    pub id: String,
    /// Language.
    pub language: String,
    /// Runtime version.
    pub version: String,
    /// When it was created.
    pub created_at: String,
}

/// Turn `o` into the final record of a run in `mode` under `limits`.
pub fn build_record(meta: RunMeta, mode: Mode, limits: &Limits, o: Outcome) -> RunRecord {
    let mut status = RunStatus::Ok;
    let mut error: Option<ErrorBody> = None;
    let mut result = None;
    let mut limit = o.limit.map(|l| match l {
        Limit::WallTime => LimitKind::WallTime,
        Limit::CpuTime => LimitKind::CpuTime,
        Limit::Memory => LimitKind::Memory,
        Limit::Output => LimitKind::Output,
    });

    // Only main mode has a result channel; in program mode the harness closes fd 3 before the
    // program starts, and anything there is ignored.
    let channel: Option<Result<ChannelMsg, _>> = (mode == Mode::Main && !o.result.is_empty())
        .then(|| serde_json::from_slice::<ChannelMsg>(&o.result));

    if o.cancelled {
        status = RunStatus::Cancelled;
        error = Some(ErrorBody::new(
            ErrorCode::Cancelled,
            "the run was cancelled",
        ));
    } else if let Some(l) = limit {
        (status, error) = limit_error(l, limits);
    } else if let Some(Ok(ChannelMsg {
        error: Some(code), ..
    })) = &channel
    {
        if code == "memory_error" {
            limit = Some(LimitKind::Memory);
            (status, error) = limit_error(LimitKind::Memory, limits);
        }
    }

    if error.is_none() {
        match (mode, channel) {
            (_, Some(Err(_))) => {
                status = RunStatus::RuntimeError;
                error = Some(ErrorBody::new(
                    ErrorCode::ResultChannelCorrupt,
                    "the result channel (fd 3) held something other than the harness's message; \
                     do not write to fd 3",
                ));
            }
            (Mode::Main, Some(Ok(m))) if m.ok => {
                let value = m.result.unwrap_or(Value::Null);
                if depth(&value) > MAX_RESULT_DEPTH {
                    status = RunStatus::RuntimeError;
                    error = Some(ErrorBody::new(
                        ErrorCode::ResultNotJson,
                        format!(
                            "main() returned a value nested deeper than {MAX_RESULT_DEPTH} levels"
                        ),
                    ));
                } else {
                    result = Some(value);
                }
            }
            (_, Some(Ok(m))) => {
                // The channel is written by code in the jail: keep only a plausible code and a
                // bounded message.
                status = RunStatus::RuntimeError;
                let code = m
                    .error
                    .as_deref()
                    .map_or(ErrorCode::RuntimeError, ErrorCode::from_harness);
                let mut message = m.message.unwrap_or_default();
                if message.len() > MAX_MESSAGE {
                    let mut cut = MAX_MESSAGE;
                    while !message.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    message.truncate(cut);
                    message.push('…');
                }
                error = Some(ErrorBody::new(code, message));
            }
            (_, None) => {
                if let Some(sig) = o.signal {
                    status = RunStatus::RuntimeError;
                    error = Some(ErrorBody::new(
                        ErrorCode::KilledBySignal,
                        format!("the process was killed by signal {sig}{}", signal_hint(sig)),
                    ));
                } else if o.exit_code != Some(0) {
                    status = RunStatus::RuntimeError;
                    error = Some(ErrorBody::new(
                        ErrorCode::NonzeroExit,
                        format!("the process exited with code {}", o.exit_code.unwrap_or(-1)),
                    ));
                } else if mode == Mode::Main {
                    status = RunStatus::RuntimeError;
                    error = Some(ErrorBody::new(
                        ErrorCode::NoResult,
                        "the process exited before main() returned",
                    ));
                }
            }
        }
    }

    let run = StepReport {
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        exit_code: o.exit_code,
        signal: o.signal,
        wall_time_ms: ms(o.wall),
        cpu_time_ms: ms(o.cpu),
        memory_peak_bytes: o.memory_peak,
        truncated: o.truncated,
        limit,
    };
    RunRecord {
        degraded: !o.missing_layers.is_empty(),
        warm: o.warm,
        missing_layers: o.missing_layers,
        error,
        run: Some(run),
        result,
        finished_at: Some(now_rfc3339()),
        timings_us: o
            .timings
            .iter()
            .map(|(k, d)| ((*k).to_owned(), d.as_micros() as u64))
            .collect(),
        ..RunRecord::new(
            meta.id,
            meta.language,
            meta.version,
            status,
            meta.created_at,
        )
    }
}

/// The compile stage's verdict: the record to return now (compile failed, hit a limit or was
/// cancelled), or the step report and the artefact archive for the run stage.
#[derive(Debug)]
pub enum CompileVerdict {
    /// The run ends here; `compile` holds the compiler's step.
    Failed(Box<RunRecord>),
    /// Go on: the compile step and the archive its wrapper wrote on fd 3.
    Compiled(Box<StepReport>, Vec<u8>),
}

/// Longest excerpt of compiler output quoted in a `compile_error` message.
const MAX_COMPILER_EXCERPT: usize = 4000;

/// Judge a compile stage's outcome (compiled under `limits`).
pub fn compile_verdict(meta: RunMeta, limits: &Limits, o: Outcome) -> CompileVerdict {
    let archive = o.result.clone();
    let mut rec = build_record(meta, Mode::Program, limits, o);
    let step = rec.run.take().unwrap_or_default();
    if rec.status == RunStatus::Ok && !archive.is_empty() {
        return CompileVerdict::Compiled(Box::new(step), archive);
    }
    match rec.status {
        RunStatus::Ok | RunStatus::RuntimeError => {
            rec.status = RunStatus::CompileError;
            let output = if step.stderr.trim().is_empty() {
                &step.stdout
            } else {
                &step.stderr
            };
            let mut excerpt = output.trim_end().to_owned();
            if excerpt.len() > MAX_COMPILER_EXCERPT {
                let mut cut = MAX_COMPILER_EXCERPT;
                while !excerpt.is_char_boundary(cut) {
                    cut -= 1;
                }
                excerpt.truncate(cut);
                excerpt.push('…');
            }
            let how = match (step.exit_code, step.signal) {
                (_, Some(sig)) => format!("the compiler was killed by signal {sig}"),
                (Some(0), None) => "the compiler produced no artefacts".to_owned(),
                (code, None) => format!("compilation failed (exit code {})", code.unwrap_or(-1)),
            };
            rec.error = Some(ErrorBody::new(
                ErrorCode::CompileError,
                format!("{how}:\n{excerpt}"),
            ));
        }
        _ => {
            if let Some(e) = rec.error.as_mut() {
                e.message = format!("compile step: {}", e.message);
            }
        }
    }
    rec.compile = Some(step);
    CompileVerdict::Failed(Box::new(rec))
}

/// Deepest result nesting passed on: the record travels inside other JSON (spawner events,
/// responses), whose parsers stop at 128 levels.
pub const MAX_RESULT_DEPTH: usize = 64;
/// Longest error message taken from the result channel.
const MAX_MESSAGE: usize = 2000;

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn limit_error(l: LimitKind, limits: &Limits) -> (RunStatus, Option<ErrorBody>) {
    let (status, code, msg) = match l {
        LimitKind::WallTime => (
            RunStatus::Timeout,
            ErrorCode::Timeout,
            format!(
                "the run exceeded its wall-clock limit of {} ms",
                limits.wall_time_ms
            ),
        ),
        LimitKind::CpuTime => (
            RunStatus::Timeout,
            ErrorCode::CpuTimeLimit,
            format!(
                "the run exceeded its CPU-time limit of {} ms",
                limits.cpu_time_ms
            ),
        ),
        LimitKind::Memory => (
            RunStatus::MemoryLimit,
            ErrorCode::MemoryLimit,
            format!(
                "the run exceeded its memory limit of {} bytes",
                limits.memory_bytes
            ),
        ),
        LimitKind::Output => (
            RunStatus::OutputLimit,
            ErrorCode::OutputLimit,
            format!(
                "the run wrote more than {} bytes to stdout or stderr (or {} to its result)",
                limits.output_bytes, limits.result_bytes
            ),
        ),
    };
    (status, Some(ErrorBody::new(code, msg)))
}

fn signal_hint(sig: i32) -> &'static str {
    match sig {
        31 => " (SIGSYS: a forbidden system call ABI)",
        11 => " (SIGSEGV)",
        9 => " (SIGKILL)",
        6 => " (SIGABRT)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn meta() -> RunMeta {
        RunMeta {
            id: "r".into(),
            language: "python".into(),
            version: "3.11.2".into(),
            created_at: now_rfc3339(),
        }
    }

    fn outcome(result: &str, exit: i32) -> Outcome {
        Outcome {
            exit_code: Some(exit),
            stdout: b"hi\n".to_vec(),
            result: result.as_bytes().to_vec(),
            wall: Duration::from_millis(12),
            ..Outcome::default()
        }
    }

    #[test]
    fn ok_result_is_separate_from_stdout() {
        let r = build_record(
            meta(),
            Mode::Main,
            &Limits::default(),
            outcome(r#"{"ok": true, "result": {"ok": 1}}"#, 0),
        );
        assert_eq!(r.status, RunStatus::Ok);
        assert_eq!(r.result, Some(serde_json::json!({"ok": 1})));
        assert_eq!(r.run.as_ref().unwrap().stdout, "hi\n");
        assert!(r.error.is_none());
    }

    #[test]
    fn harness_errors_keep_their_code() {
        let r = build_record(
            meta(),
            Mode::Main,
            &Limits::default(),
            outcome(r#"{"ok": false, "error": "no_main", "message": "m"}"#, 1),
        );
        assert_eq!(r.status, RunStatus::RuntimeError);
        assert_eq!(r.error.unwrap().code, "no_main");
        let r = build_record(
            meta(),
            Mode::Main,
            &Limits::default(),
            outcome(
                r#"{"ok": false, "error": "memory_error", "message": "m"}"#,
                1,
            ),
        );
        assert_eq!(r.status, RunStatus::MemoryLimit);
        assert_eq!(r.run.unwrap().limit, Some(LimitKind::Memory));
        let r = build_record(
            meta(),
            Mode::Main,
            &Limits::default(),
            outcome("garbage", 0),
        );
        assert_eq!(r.error.unwrap().code, "result_channel_corrupt");
    }

    #[test]
    fn channel_content_is_bounded() {
        let mut deep = String::from("0");
        for _ in 0..100 {
            deep = format!("[{deep}]");
        }
        let msg = format!(r#"{{"ok": true, "result": {deep}}}"#);
        let r = build_record(meta(), Mode::Main, &Limits::default(), outcome(&msg, 0));
        assert_eq!(r.error.unwrap().code, "result_not_json");
        assert!(r.result.is_none());
        let long = "m".repeat(10_000);
        let msg = format!(r#"{{"ok": false, "error": "Not A Code!", "message": "{long}"}}"#);
        let r = build_record(meta(), Mode::Main, &Limits::default(), outcome(&msg, 1));
        let e = r.error.unwrap();
        assert_eq!(e.code, "runtime_error");
        assert!(e.message.len() <= MAX_MESSAGE + 3);
    }

    #[test]
    fn limits_win_over_exit_status() {
        let mut o = outcome("", 0);
        o.exit_code = None;
        o.signal = Some(9);
        o.limit = Some(Limit::WallTime);
        let r = build_record(meta(), Mode::Program, &Limits::default(), o);
        assert_eq!(r.status, RunStatus::Timeout);
        assert_eq!(
            r.run.unwrap().stdout,
            "hi\n",
            "output before the kill is kept"
        );
    }

    #[test]
    fn program_mode_exit_codes() {
        let r = build_record(meta(), Mode::Program, &Limits::default(), outcome("", 0));
        assert_eq!(r.status, RunStatus::Ok);
        let r = build_record(meta(), Mode::Program, &Limits::default(), outcome("", 3));
        assert_eq!(r.error.unwrap().code, "nonzero_exit");
        let mut o = outcome("", 0);
        o.missing_layers = vec!["landlock".into()];
        assert!(build_record(meta(), Mode::Program, &Limits::default(), o).degraded);
    }
}
