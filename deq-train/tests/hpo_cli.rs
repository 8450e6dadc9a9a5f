//! The `hpo` subcommand end to end: outputs, and errors that name the problem.
mod common;

use common::temp_dir;
use std::process::Command;

fn deq_train() -> Command {
    Command::new(env!("CARGO_BIN_EXE_deq-train"))
}

#[test]
fn hpo_writes_a_trace_a_summary_and_a_plot() {
    let out = temp_dir("hpo");
    let status = deq_train()
        .args([
            "hpo",
            "--dataset",
            "synthetic:600x80",
            "--methods",
            "hoag,shine,opa,jfb,cg3,grid,random",
            "--seeds",
            "2",
            "--outer-iters",
            "6",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let csv = std::fs::read_to_string(out.join("trace.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "method,seed,iteration,seconds,lambda,val_loss,test_loss,accepted"
    );
    assert_eq!(
        lines.count(),
        7 * 2 * 6,
        "one row per method, seed and step"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    for method in ["hoag", "shine", "opa", "jfb", "cg3", "grid", "random"] {
        assert!(
            summary[method]["median_final_test_loss"]
                .as_f64()
                .unwrap()
                .is_finite(),
            "{method}"
        );
    }
    let png = std::fs::read(out.join("suboptimality.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG file");
    assert!(
        png.len() > 10_000,
        "a real picture, not an empty canvas ({} bytes)",
        png.len()
    );
    assert!(
        !out.join("trace.csv.tmp").exists()
            && !out.join("summary.json.tmp").exists()
            && !out.join("suboptimality.tmp.png").exists()
    );
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn hpo_bad_input_names_the_problem() {
    let dir = temp_dir("bad");
    let libsvm = dir.join("bad.svm");
    std::fs::write(&libsvm, "1 1:0.5\n-1 2:oops\n").unwrap();
    let three = dir.join("three.svm");
    std::fs::write(&three, "1 1:0.5\n2 2:1\n3 1:1\n").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--dataset".into(), format!("libsvm:{}", libsvm.display())],
            "line 2",
        ),
        (
            vec!["--dataset".into(), format!("libsvm:{}", three.display())],
            "exactly two label values",
        ),
        (
            vec!["--dataset".into(), "cifar".into()],
            "unknown dataset `cifar`",
        ),
        (
            vec!["--dataset".into(), "synthetic:10xq".into()],
            "synthetic cols `q`",
        ),
        (
            vec!["--methods".into(), "hoag,magic".into()],
            "unknown method `magic`",
        ),
        (
            vec!["--dataset".into(), "fortunes:/nonexistent".into()],
            "apt-get install fortunes",
        ),
        (vec!["--seeds".into(), "0".into()], "at least 1"),
    ];
    for (args, needle) in cases {
        let output = deq_train()
            .arg("hpo")
            .args(&args)
            .arg("--out")
            .arg(&dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(
            stderr.contains(needle),
            "{args:?}: `{needle}` not in: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
