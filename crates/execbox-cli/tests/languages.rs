//! Every shipped runtime through the real server and jail: hello world, a stdin echo, a
//! non-zero exit, and a compile error in each compiled language; multi-file programs; two
//! versions of one language picked by the selector; the runtime listing (HTTP and CLI); the
//! 400s of selection. One server (its spawner smoke-tests `runtimes/` at start), languages
//! checked two at a time. Needs root; skips otherwise (fails with CI=true).

mod support;

use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use support::{privileged, Api, Options, Server};

/// One language's programs: hello prints `hello`, echo copies stdin, exit exits with 3.
struct Lang {
    language: &'static str,
    hello: &'static str,
    echo: &'static str,
    exit3: &'static str,
    /// A program that does not compile (compiled languages).
    broken: Option<&'static str>,
}

const LANGS: &[Lang] = &[
    Lang { language: "python", hello: "print('hello')", echo: "import sys\nsys.stdout.write(sys.stdin.read())", exit3: "raise SystemExit(3)", broken: None },
    Lang { language: "pypy", hello: "print('hello')", echo: "import sys\nsys.stdout.write(sys.stdin.read())", exit3: "raise SystemExit(3)", broken: None },
    Lang { language: "bash", hello: "echo hello", echo: "cat", exit3: "exit 3", broken: None },
    Lang { language: "js", hello: "console.log('hello')", echo: "process.stdin.pipe(process.stdout)", exit3: "process.exit(3)", broken: None },
    Lang { language: "ts", hello: "const s: string = 'hello';\nconsole.log(s);", echo: "process.stdin.pipe(process.stdout);", exit3: "process.exit(3);", broken: Some("const n: number = 'not a number';") },
    Lang { language: "ruby", hello: "puts 'hello'", echo: "print STDIN.read", exit3: "exit 3", broken: None },
    Lang { language: "php", hello: "<?php echo \"hello\\n\";", echo: "<?php echo stream_get_contents(STDIN);", exit3: "<?php exit(3);", broken: None },
    Lang { language: "perl", hello: "print \"hello\\n\";", echo: "print while <STDIN>;", exit3: "exit 3;", broken: None },
    Lang { language: "lua", hello: "print('hello')", echo: "io.write(io.read('a'))", exit3: "os.exit(3)", broken: None },
    Lang { language: "c", hello: "#include <stdio.h>\nint main(void){puts(\"hello\");return 0;}", echo: "#include <stdio.h>\nint main(void){int c;while((c=getchar())!=EOF)putchar(c);return 0;}", exit3: "int main(void){return 3;}", broken: Some("int main(void){return x;}") },
    Lang { language: "c++", hello: "#include <iostream>\nint main(){std::cout<<\"hello\\n\";}", echo: "#include <iostream>\nint main(){std::cout<<std::cin.rdbuf();}", exit3: "int main(){return 3;}", broken: Some("int main(){undefined_thing();}") },
    Lang { language: "rust", hello: "fn main(){println!(\"hello\");}", echo: "use std::io::*;\nfn main(){let mut s=String::new();stdin().read_to_string(&mut s).unwrap();print!(\"{s}\");}", exit3: "fn main(){std::process::exit(3);}", broken: Some("fn main(){let x: u8 = \"no\";}") },
    Lang { language: "go", hello: "package main\nimport \"fmt\"\nfunc main(){fmt.Println(\"hello\")}", echo: "package main\nimport (\"io\";\"os\")\nfunc main(){io.Copy(os.Stdout, os.Stdin)}", exit3: "package main\nimport \"os\"\nfunc main(){os.Exit(3)}", broken: Some("package main\nfunc main(){x := 1}") },
    Lang { language: "java", hello: "public class Main{public static void main(String[] a){System.out.println(\"hello\");}}", echo: "public class Main{public static void main(String[] a)throws Exception{System.in.transferTo(System.out);}}", exit3: "public class Main{public static void main(String[] a){System.exit(3);}}", broken: Some("public class Main{public static void main(String[] a){int x = \"s\";}}") },
    Lang { language: "fortran", hello: "program h\nprint '(a)', 'hello'\nend program h", echo: "program e\ncharacter(len=100) :: l\ninteger :: s\ndo\nread(*,'(a)',iostat=s) l\nif (s /= 0) exit\nprint '(a)', trim(l)\nend do\nend program e", exit3: "program x\nstop 3\nend program x", broken: Some("program b\ncall nothing(\nend program b") },
    Lang { language: "pascal", hello: "program h;\nbegin\nwriteln('hello');\nend.", echo: "program e;\nvar l: string;\nbegin\nwhile not eof do begin readln(l); writeln(l); end;\nend.", exit3: "program x;\nbegin\nhalt(3);\nend.", broken: Some("program b;\nbegin\nundefined_proc;\nend.") },
];

const ECHO: &str = "abc\nxyz\n";

async fn run(api: &Api, language: &str, version: &str, files: Value, stdin: &str) -> Value {
    let r = api
        .post(
            "/v1/runs",
            json!({"language": language, "version": version, "files": files, "stdin": stdin}),
        )
        .await;
    assert_eq!(r.status, 200, "{language}: {}", r.text);
    r.json
}

fn one(src: &str) -> Value {
    json!([{ "content": src }])
}

async fn check_language(api: Api, l: &'static Lang) -> Result<(), String> {
    let ctx = |what: &str, rec: &Value| format!("{} {what}: {rec:#}", l.language);
    let rec = run(&api, l.language, "*", one(l.hello), "").await;
    if rec["status"] != "ok" || rec["run"]["stdout"] != "hello\n" {
        return Err(ctx("hello", &rec));
    }
    if rec["version"].as_str().unwrap_or_default().is_empty() {
        return Err(ctx("hello names no version", &rec));
    }
    let rec = run(&api, l.language, "*", one(l.echo), ECHO).await;
    if rec["status"] != "ok" || rec["run"]["stdout"] != ECHO {
        return Err(ctx("echo", &rec));
    }
    let rec = run(&api, l.language, "*", one(l.exit3), "").await;
    if rec["status"] != "runtime_error" || rec["run"]["exit_code"] != 3 {
        return Err(ctx("exit 3", &rec));
    }
    if let Some(broken) = l.broken {
        let rec = run(&api, l.language, "*", one(broken), "").await;
        if rec["status"] != "compile_error"
            || rec["error"]["code"] != "compile_error"
            || rec["compile"].is_null()
            || !rec["run"].is_null()
        {
            return Err(ctx("compile error", &rec));
        }
    }
    Ok(())
}

fn runtimes_dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../runtimes").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_language_through_the_jail() {
    if !privileged() {
        return;
    }
    let dir = runtimes_dir();
    let server = Server::start_with(
        &["--runtimes-dir", &dir],
        Options {
            no_auth: true,
            ..Options::default()
        },
    );
    let api = Api::new(&server);

    // The listing: every language, Lua and C++ twice, with aliases and capabilities.
    let list = api.get("/v1/runtimes").await;
    assert_eq!(list.status, 200);
    let all = list.json.as_array().cloned().unwrap_or_default();
    let versions = |lang: &str| {
        all.iter()
            .filter(|r| r["language"] == lang)
            .map(|r| r["version"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    for l in LANGS {
        let named = all.iter().any(|r| {
            r["language"] == l.language
                || r["aliases"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == l.language))
        });
        assert!(named, "{} not offered: {all:#?}", l.language);
    }
    assert_eq!(versions("lua").len(), 2, "{all:#?}");
    assert_eq!(versions("c++").len(), 2, "{all:#?}");
    let py = all.iter().find(|r| r["language"] == "python").unwrap();
    assert_eq!(py["modes"], json!(["program", "main"]));
    assert_eq!(
        all.iter().find(|r| r["language"] == "go").unwrap()["compiled"],
        true
    );

    // The CLI prints the same list.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_execbox"))
        .args(["runtimes", "--json", "--runtimes-dir", &dir])
        .output()
        .expect("execbox runtimes");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(cli, list.json);

    // Selection errors name what exists.
    let r = api
        .post("/v1/runs", json!({"language": "cobol", "files": one("x")}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (400, "unknown_language"),
        "{}",
        r.text
    );
    assert!(r.message().contains("lua 5.3.6, 5.4.4"), "{}", r.message());
    let r = api
        .post(
            "/v1/runs",
            json!({"language": "go", "version": ">=1.21", "files": one("x")}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (400, "no_matching_version"),
        "{}",
        r.text
    );
    assert!(r.message().contains("go 1.19"), "{}", r.message());

    // Two versions of one language, chosen by the selector.
    let lua = one("print(_VERSION)");
    let rec = run(&api, "lua", "5.3", lua.clone(), "").await;
    assert_eq!(
        (rec["run"]["stdout"].as_str(), rec["version"].as_str()),
        (Some("Lua 5.3\n"), Some("5.3.6"))
    );
    let rec = run(&api, "lua", "*", lua.clone(), "").await;
    assert_eq!(rec["run"]["stdout"], "Lua 5.4\n");
    let rec = run(&api, "lua", "<5.4", lua, "").await;
    assert_eq!(rec["version"], "5.3.6");
    let cpp = one("#include <cstdio>\nint main(){std::printf(\"%d\\n\", __GNUC__);}");
    let rec = run(&api, "cpp", "11", cpp.clone(), "").await;
    assert_eq!(
        (rec["run"]["stdout"].as_str(), rec["language"].as_str()),
        (Some("11\n"), Some("c++"))
    );
    let rec = run(&api, "g++", "*", cpp, "").await;
    assert_eq!(rec["run"]["stdout"], "12\n");

    // Multi-file programs, entry point first.
    let rec = run(
        &api,
        "c",
        "*",
        json!([
            {"name": "main.c", "content": "#include <stdio.h>\nint twice(int);\nint main(void){printf(\"%d\\n\", twice(21));return 0;}"},
            {"name": "twice.c", "content": "int twice(int x){return 2*x;}"}
        ]),
        "",
    )
    .await;
    assert_eq!(
        (rec["status"].as_str(), rec["run"]["stdout"].as_str()),
        (Some("ok"), Some("42\n")),
        "{rec:#}"
    );
    let rec = run(
        &api,
        "python",
        "3",
        json!([
            {"name": "main.py", "content": "import util\nprint(util.twice(21))"},
            {"name": "util.py", "content": "def twice(x):\n    return 2 * x\n"}
        ]),
        "",
    )
    .await;
    assert_eq!(rec["run"]["stdout"], "42\n", "{rec:#}");
    let rec = run(
        &api,
        "go",
        "1",
        json!([
            {"name": "main.go", "content": "package main\nimport \"fmt\"\nfunc main(){fmt.Println(twice(21))}"},
            {"name": "twice.go", "content": "package main\nfunc twice(x int) int { return 2 * x }"}
        ]),
        "",
    )
    .await;
    assert_eq!(rec["run"]["stdout"], "42\n", "{rec:#}");

    // Every language, two at a time.
    let failures: Vec<String> = stream::iter(LANGS)
        .map(|l| check_language(api.clone(), l))
        .buffer_unordered(2)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    drop(server);
}

async fn post_run(api: &Api, body: Value) -> Value {
    let r = api.post("/v1/runs", body.clone()).await;
    assert_eq!(r.status, 200, "{body}: {}", r.text);
    r.json
}

fn passed(rec: &Value) -> Vec<Value> {
    rec["cases"]
        .as_array()
        .map(|c| c.iter().map(|c| c["passed"].clone()).collect())
        .unwrap_or_default()
}

const C_TWICE: &str = "#include <stdio.h>\nint main(int argc, char **argv){int x; if (scanf(\"%d\", &x) != 1) return 2; printf(\"%d%s\\n\", 2 * x, argc > 1 ? \"  \" : \"\"); return 0;}";
const PY_TWICE: &str =
    "import sys\nx = int(sys.stdin.read())\nif x < 0:\n    raise SystemExit(3)\nprint(2 * x)";

/// Test cases (compiled once), files out of `/work/out`, and the bad inputs of issue 9, through
/// the real server and jail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cases_files_out_and_bad_input_through_the_jail() {
    if !privileged() {
        return;
    }
    let dir = runtimes_dir();
    let server = Server::start_with(
        &["--runtimes-dir", &dir, "--max-timeout-ms", "6000"],
        Options {
            no_auth: true,
            ..Options::default()
        },
    );
    let api = Api::new(&server);

    // C: one compile, three cases (a pass, a fail, a pass under `trim` with trailing blanks).
    let rec = post_run(
        &api,
        json!({"language": "c", "files": one(C_TWICE), "compare": "trim", "cases": [
            {"stdin": "2", "expected_stdout": "4\n"},
            {"stdin": "3", "expected_stdout": "7\n"},
            {"stdin": "5", "args": ["pad"], "expected_stdout": "10"},
        ]}),
    )
    .await;
    assert_eq!(rec["status"], "ok", "{rec:#}");
    assert!(rec["compile"].is_object(), "one compile step: {rec:#}");
    assert!(rec["run"].is_null(), "{rec:#}");
    assert_eq!(
        passed(&rec),
        [json!(true), json!(false), json!(true)],
        "{rec:#}"
    );
    assert_eq!(rec["cases"][1]["run"]["stdout"], "6\n");
    assert_eq!(rec["cases"][2]["index"], 2);
    assert_eq!(
        rec["summary"],
        json!({"total": 3, "ran": 3, "passed": 2, "failed": 1})
    );
    // exact: the trailing blanks fail.
    let rec = post_run(
        &api,
        json!({"language": "c", "files": one(C_TWICE), "cases": [
            {"stdin": "5", "args": ["pad"], "expected_stdout": "10\n"},
        ]}),
    )
    .await;
    assert_eq!(passed(&rec), [json!(false)], "{rec:#}");

    // Python: a pass, a fail, a case that exits 3 (the worst case sets the status).
    let rec = post_run(
        &api,
        json!({"language": "python", "files": one(PY_TWICE), "cases": [
            {"stdin": "21", "expected_stdout": "42\n"},
            {"stdin": "1", "expected_stdout": "3\n"},
            {"stdin": "-1"},
        ]}),
    )
    .await;
    assert_eq!(rec["status"], "runtime_error", "{rec:#}");
    assert_eq!(rec["error"]["code"], "nonzero_exit", "{rec:#}");
    assert!(rec["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("case 2: "));
    assert_eq!(
        passed(&rec),
        [json!(true), json!(false), Value::Null],
        "{rec:#}"
    );
    assert_eq!(rec["cases"][2]["run"]["exit_code"], 3);
    assert_eq!(rec["summary"]["failed"], 1);

    // Files out: a CSV and a PNG-like file from Python, a CSV from C.
    let py = "import os\nopen('out/data.csv', 'w').write('x,y\\n1,2\\n')\nopen('out/plot.png', 'wb').write(b'\\x89PNG\\r\\n\\x1a\\n' + bytes(range(256)))\nprint('wrote')";
    let rec = post_run(&api, json!({"language": "python", "files": one(py)})).await;
    assert_eq!(rec["status"], "ok", "{rec:#}");
    let files = rec["files"].as_array().cloned().unwrap_or_default();
    assert_eq!(files.len(), 2, "{rec:#}");
    assert_eq!(files[0]["name"], "data.csv");
    assert_eq!(files[0]["content_base64"], "eCx5CjEsMgo=");
    assert_eq!(
        (files[1]["name"].as_str(), files[1]["size"].as_u64()),
        (Some("plot.png"), Some(264))
    );
    assert!(files[1]["content_base64"]
        .as_str()
        .unwrap()
        .starts_with("iVBORw0KGg"));
    let c = "#include <stdio.h>\nint main(void){FILE *f = fopen(\"out/result.csv\", \"w\"); if (!f) return 1; fprintf(f, \"n,sq\\n3,9\\n\"); fclose(f); return 4;}";
    let rec = post_run(&api, json!({"language": "c", "files": one(c)})).await;
    assert_eq!(rec["status"], "runtime_error", "{rec:#}");
    assert_eq!(
        rec["run"]["exit_code"], 4,
        "the program's status is kept: {rec:#}"
    );
    assert_eq!(rec["files"][0]["name"], "result.csv", "{rec:#}");
    assert_eq!(rec["files"][0]["content_base64"], "bixzcQozLDkK");
    // A signal is still a signal under the wrapper.
    let rec = post_run(
        &api,
        json!({"language": "c", "files": one("#include <signal.h>\nint main(void){raise(SIGSEGV);return 0;}")}),
    )
    .await;
    assert_eq!(
        (rec["run"]["signal"].as_i64(), rec["error"]["code"].as_str()),
        (Some(11), Some("killed_by_signal")),
        "{rec:#}"
    );

    // Too many, too big, or not plain files under /work/out.
    for (what, src, code) in [
        (
            "count",
            "for i in range(17):\n    open(f'out/f{i}', 'w').write('x')",
            "output_files_limit",
        ),
        (
            "size",
            "open('out/big', 'wb').write(b'x' * (2 << 20))",
            "output_files_limit",
        ),
        (
            "subfolder",
            "import os\nos.mkdir('out/sub')\nopen('out/sub/x', 'w').write('x')",
            "invalid_output_file",
        ),
        (
            "control character",
            "open('out/a\\nb', 'w').write('x')",
            "invalid_output_file",
        ),
        (
            "symlink",
            "import os\nos.symlink('/etc/passwd', 'out/p')",
            "invalid_output_file",
        ),
    ] {
        let rec = post_run(&api, json!({"language": "python", "files": one(src)})).await;
        assert_eq!(rec["error"]["code"], code, "{what}: {rec:#}");
        assert!(rec["files"].is_null(), "{what}: {rec:#}");
        if code == "output_files_limit" {
            assert_eq!(rec["status"], "output_limit", "{what}: {rec:#}");
            let m = rec["error"]["message"].as_str().unwrap();
            assert!(
                m.contains("16 files") && m.contains("1048576 bytes"),
                "{what}: {m}"
            );
        }
    }

    // A compile that floods its output, and one that never ends.
    let flood = format!(
        "#warning {}\n#include __FILE__\nint main(void){{return 0;}}\n",
        "flood".repeat(2000)
    );
    let rec = post_run(&api, json!({"language": "c", "files": one(&flood)})).await;
    assert_eq!(
        (rec["status"].as_str(), rec["error"]["code"].as_str()),
        (Some("output_limit"), Some("output_limit")),
        "{rec:#}"
    );
    assert!(rec["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("compile step: "));
    assert_eq!(rec["compile"]["truncated"], true);
    assert!(rec["run"].is_null());
    // 2^40 includes: the compiler never ends (its memory grows slowly; this server's maximum
    // wall-clock limit, 6 s, caps the compile stage's 20 s).
    let forever = "#if __INCLUDE_LEVEL__ < 40\n#include __FILE__\n#include __FILE__\n#endif\n\
                   #if __INCLUDE_LEVEL__ == 0\nint main(void){return 0;}\n#endif\n";
    let rec = post_run(&api, json!({"language": "c", "files": one(forever)})).await;
    // Its preprocessor state grows with every include, so on an idle fast host the compile
    // stage's memory limit (512 MiB here) can fire just before the 6 s cap: either limit ends
    // it, as a compile step, never the run stage.
    let m = rec["error"]["message"].as_str().unwrap_or_default();
    match rec["status"].as_str() {
        Some("timeout") => assert!(
            m.starts_with("compile step: ") && m.contains("6000 ms"),
            "{m}"
        ),
        Some("memory_limit") => assert!(m.starts_with("compile step: "), "{m}"),
        _ => panic!("the endless compile was not stopped by a limit: {rec:#}"),
    }
    assert!(rec["run"].is_null());

    // Names execbox uses itself are refused before any jail.
    for name in [".execbox-build.tar", "out"] {
        let r = api
            .post(
                "/v1/runs",
                json!({"language": "c", "files": [{"content": "int main(void){return 0;}"}, {"name": name, "content": "x"}]}),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (400, "reserved_file_name"),
            "{}",
            r.text
        );
    }
    let r = api
        .post(
            "/v1/runs",
            json!({"language": "c", "files": one("int main(void){return 0;}"), "cases": vec![json!({}); 33]}),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "too_many_cases"), "{}", r.text);
    drop(server);
}
