//! deploy/: the manifests parse and agree with each other, with the image and
//! with what the binary serves; the config they mount runs as it is; the
//! alert rules pass `promtool check rules` and `promtool test rules`; and the
//! dashboard and the rules name only metrics a freshly started ingester
//! exposes.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::broker::{free_port, Broker, Ingester};
use common::{baseline, cli, payloads, wait_equal, TestDb};
use serde::Deserialize;
use serde_yaml::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(name: &str) -> String {
    let path = deploy_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a multi-document YAML file.
fn documents(name: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&read(name))
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}")))
        .collect()
}

/// The Kubernetes objects of deploy/, by file.
fn objects() -> Vec<(String, Value)> {
    let mut names: Vec<String> = std::fs::read_dir(deploy_dir())
        .expect("deploy/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        for doc in documents(&name) {
            assert!(doc.is_mapping(), "{name}: a document is not a mapping");
            if doc["kind"].is_string() {
                out.push((name.clone(), doc));
            }
        }
    }
    out
}

/// The one object of `kind`.
fn object<'a>(objects: &'a [(String, Value)], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|(_, o)| o["kind"].as_str() == Some(kind))
        .map(|(_, o)| o)
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind}");
    found[0]
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

/// Every key of `small` is in `big` with the same value (label selectors).
fn selects(small: &Value, big: &Value) -> bool {
    small
        .as_mapping()
        .map(|m| !m.is_empty() && m.iter().all(|(k, v)| big.get(k) == Some(v)))
        .unwrap_or(false)
}

/// The application config the ConfigMap carries, and its data key.
fn mounted_config(objects: &[(String, Value)]) -> (String, String) {
    let data = object(objects, "ConfigMap")["data"]
        .as_mapping()
        .expect("ConfigMap data");
    assert_eq!(data.len(), 1, "one config file in the ConfigMap");
    let (key, text) = data.iter().next().expect("one entry");
    (s(key).to_string(), s(text).to_string())
}

fn container(deployment: &Value) -> &Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    assert_eq!(containers.len(), 1);
    &containers[0]
}

/// The volume mount of `volume` in the container.
fn mount<'a>(c: &'a Value, volume: &str) -> &'a Value {
    c["volumeMounts"]
        .as_sequence()
        .and_then(|m| m.iter().find(|m| m["name"].as_str() == Some(volume)))
        .unwrap_or_else(|| panic!("no mount of volume {volume}"))
}

fn volume<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .and_then(|v| v.iter().find(|v| v["name"].as_str() == Some(name)))
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The manifests parse, reference each other by the right names and labels,
/// run as upstream's uid/gid, mount the config where the binary is told to
/// read it, probe the endpoints the binary serves on the port the config
/// sets, and hold no secret.
#[tokio::test]
async fn manifests_parse_and_fit_together() {
    let objects = objects();
    let kinds: BTreeSet<&str> = objects.iter().map(|(_, o)| s(&o["kind"])).collect();
    for kind in [
        "ConfigMap",
        "Deployment",
        "Kustomization",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ] {
        assert!(kinds.contains(kind), "no {kind} in deploy/: {kinds:?}");
    }
    assert!(
        !kinds.contains("Secret"),
        "a Secret belongs to the operator"
    );

    // `kubectl apply -k deploy/` applies every manifest file.
    let listed: BTreeSet<String> = object(&objects, "Kustomization")["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| s(r).to_string())
        .collect();
    let files: BTreeSet<String> = objects
        .iter()
        .filter(|(_, o)| o["kind"].as_str() != Some("Kustomization"))
        .map(|(f, _)| f.clone())
        .collect();
    assert_eq!(listed, files);

    let deployment = object(&objects, "Deployment");
    let pod = &deployment["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        labels
    ));
    let service = object(&objects, "Service");
    assert!(selects(&service["spec"]["selector"], labels));
    let monitor = object(&objects, "ServiceMonitor");
    assert!(selects(
        &monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"]
    ));
    // The alert rules and the dashboard select on the job the scrape gets:
    // the Service's name.
    assert_eq!(s(&service["metadata"]["name"]), "lookout-ingester");
    assert_eq!(
        s(&pod["spec"]["serviceAccountName"]),
        s(&object(&objects, "ServiceAccount")["metadata"]["name"])
    );

    // Upstream's chart runs the ingester as uid 1000, gid 2000; so does the image.
    let security = &pod["spec"]["securityContext"];
    assert_eq!(security["runAsUser"].as_u64(), Some(1000));
    assert_eq!(security["runAsGroup"].as_u64(), Some(2000));
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.lines().any(|l| l.trim() == "USER 1000:2000"),
        "Dockerfile USER"
    );

    // The config: mounted from the ConfigMap at the path given to `run`,
    // which is also the image's default command.
    let c = container(deployment);
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(s)
        .collect();
    assert_eq!(args[..2], ["run", "--config"]);
    let config_path = args[2];
    assert!(
        dockerfile.contains(&format!(r#"CMD ["run", "--config", "{config_path}"]"#)),
        "the image's CMD reads {config_path}"
    );
    let (key, config_text) = mounted_config(&objects);
    let config_mount = mount(c, "user-config");
    assert_eq!(s(&config_mount["mountPath"]), config_path);
    assert_eq!(s(&config_mount["subPath"]), key);
    assert_eq!(
        s(&volume(deployment, "user-config")["configMap"]["name"]),
        s(&object(&objects, "ConfigMap")["metadata"]["name"])
    );

    // `config --show` accepts it without a warning and says which port.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("application_config.yaml");
    std::fs::write(&file, &config_text).expect("write config");
    let out = cli([
        "config".as_ref(),
        "--show".as_ref(),
        "--config".as_ref(),
        file.as_os_str(),
    ])
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        !out.stderr.contains("WARN") && !out.stderr.contains("ERROR"),
        "the mounted config is not taken as it is:\n{}",
        out.stderr
    );
    let shown: Value = serde_yaml::from_str(&out.stdout).expect("config --show prints YAML");
    let port = shown["metricsPort"].as_u64().expect("metricsPort");
    assert_eq!(port, 9000, "upstream's chart serves metrics on 9000");

    // One port, named metrics, everywhere; the probes use it.
    let ports = c["ports"].as_sequence().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(s(&ports[0]["name"]), "metrics");
    assert_eq!(ports[0]["containerPort"].as_u64(), Some(port));
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["port"].as_u64(), Some(port));
    assert_eq!(s(&service_port["targetPort"]), "metrics");
    assert_eq!(
        s(&monitor["spec"]["endpoints"][0]["port"]),
        s(&service_port["name"])
    );
    assert_eq!(s(&monitor["spec"]["endpoints"][0]["path"]), "/metrics");
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(s(&get["path"]), path, "{probe}");
        assert_eq!(s(&get["port"]), "metrics", "{probe}");
    }

    // The password is a file from a Secret the operator creates; the spool
    // is on a writable volume (the root filesystem is read-only).
    let password_file = s(&shown["postgres"]["passwordFile"]);
    let secret_dir = s(&mount(c, "postgres-password")["mountPath"]);
    let secret = &volume(deployment, "postgres-password")["secret"];
    assert_eq!(
        format!("{secret_dir}/{}", s(&secret["items"][0]["path"])),
        password_file
    );
    assert!(secret["secretName"].is_string());
    assert!(
        !config_text.contains("password:"),
        "a password in the ConfigMap"
    );
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    let spool_dir = s(&mount(c, "spool")["mountPath"]);
    assert!(s(&shown["deadLetterSpool"]).starts_with(&format!("{spool_dir}/")));
    assert!(volume(deployment, "spool")["emptyDir"].is_mapping());
}

/// The built-in objects (not the Prometheus Operator's or kustomize's
/// kinds, which it has no schema for) validate strictly against the
/// Kubernetes API schemas of the oldest and newest versions
/// kubernetes-validate knows: a misspelt or misplaced field fails.
#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let objects = objects();
    let core: Vec<&(String, Value)> = objects
        .iter()
        .filter(|(_, o)| {
            !s(&o["apiVersion"]).contains(".coreos.com")
                && !s(&o["apiVersion"]).contains("kustomize")
        })
        .collect();
    let files: BTreeSet<&str> = core.iter().map(|(f, _)| f.as_str()).collect();
    assert!(files.contains("deployment.yaml"), "{files:?}");
    for version in ["1.25.0", "1.37.0"] {
        let out = std::process::Command::new("python3")
            .current_dir(deploy_dir())
            .args(["-m", "kubernetes_validate", "--strict", "-k", version])
            .args(&files)
            .output()
            .expect("python3");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains("No module named"),
            "kubernetes-validate is missing: scripts/setup.sh installs it"
        );
        assert!(out.status.success(), "Kubernetes {version}:\n{text}");
        let passed = text
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        assert_eq!(passed, core.len(), "Kubernetes {version}:\n{text}");
    }
}

/// `GET path` with HTTP/1.0 (so the body is not chunked): status and body;
/// status 0 if nothing answers.
async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, String::new());
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Metric names a Prometheus text exposition holds, histogram and summary
/// series names included.
fn exposed_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                names.insert(name.to_string());
                let suffixes: &[&str] = match kind {
                    "histogram" => &["_bucket", "_sum", "_count"],
                    "summary" => &["_sum", "_count"],
                    _ => &[],
                };
                for suffix in suffixes {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// PromQL keywords and aggregation operators (which may be followed by
/// `by (…)` rather than a parenthesis) that read like identifiers.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// The metric names a PromQL expression selects: identifiers outside
/// strings, label matchers and ranges that are neither functions,
/// aggregations nor keywords, nor the label lists of by/without/on/…
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_label_list = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    i += 1;
                }
                i += 1;
            }
            '(' if skip_label_list => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                skip_label_list = false;
                i += 1;
            }
            c if c.is_ascii_digit() || c == '.' || c == '$' => {
                // Numbers, durations and dashboard variables.
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "._".contains(chars[i]))
                {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i]))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let call = j < chars.len() && chars[j] == '(';
                let lower = word.to_ascii_lowercase();
                if [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&lower.as_str())
                {
                    skip_label_list = true;
                } else if !call && !KEYWORDS.contains(&lower.as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The PrometheusRule's rules, as a rule file.
fn rule_file() -> Value {
    let objects = objects();
    object(&objects, "PrometheusRule")["spec"].clone()
}

fn rules() -> Vec<Value> {
    rule_file()["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .collect()
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("grafana-dashboard.json")).expect("the dashboard is valid JSON")
}

/// Every query of the dashboard's panels.
fn dashboard_queries(dash: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for t in targets {
            out.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    out
}

/// A dashboard query as Prometheus sees it once Grafana has filled in its
/// variables.
fn as_promql(query: &str) -> String {
    let q = query
        .replace("$__rate_interval", "5m")
        .replace("$job", "lookout-ingester")
        .replace("$instance", ".*");
    assert!(!q.contains('$'), "unknown variable in {query}");
    q
}

fn promtool() -> &'static str {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "promtool not found: scripts/setup.sh installs it (Debian's prometheus package)"
    );
    "promtool"
}

/// `promtool ARGS` in `dir`: its output; fails the test unless it succeeds.
fn run_promtool(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(promtool())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The PrometheusRule's spec passes `promtool check rules`, and its unit
/// tests (deploy/prometheus-rules.test.yaml) pass, with for each alert a case
/// that fires and one that stays quiet.
#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules_text = serde_yaml::to_string(&rule_file()).expect("yaml");
    std::fs::write(dir.path().join("prometheus-rules.yaml"), rules_text).expect("write");
    std::fs::write(
        dir.path().join("prometheus-rules.test.yaml"),
        read("prometheus-rules.test.yaml"),
    )
    .expect("write");
    let checked = run_promtool(dir.path(), &["check", "rules", "prometheus-rules.yaml"]);
    let alerts: Vec<String> = rules()
        .iter()
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect();
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{checked}"
    );
    let tested = run_promtool(dir.path(), &["test", "rules", "prometheus-rules.test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");

    let tests: Value = serde_yaml::from_str(&read("prometheus-rules.test.yaml")).expect("yaml");
    let cases: Vec<&Value> = tests["tests"]
        .as_sequence()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().expect("alert_rule_test"))
        .collect();
    for alert in &alerts {
        let of: Vec<&&Value> = cases
            .iter()
            .filter(|c| c["alertname"].as_str() == Some(alert))
            .collect();
        let fires = of
            .iter()
            .any(|c| c["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty()));
        let quiet = of
            .iter()
            .any(|c| c["exp_alerts"].as_sequence().is_some_and(|a| a.is_empty()));
        assert!(
            fires && quiet,
            "{alert}: fires tested {fires}, quiet tested {quiet}"
        );
    }
    // Each alert has a start-up grace: the process's age, or (rules on
    // `up`, which has no process behind it) a `for:` wait.
    for rule in rules() {
        let expr = s(&rule["expr"]);
        assert!(
            expr.contains("process_start_time_seconds") || rule["for"].is_string(),
            "{} has no start-up grace",
            s(&rule["alert"])
        );
    }
}

/// The dashboard is valid JSON whose panels each query something, whose
/// queries are valid PromQL (through promtool), and which shows upstream's
/// names beside ours.
#[test]
fn dashboard_is_valid_and_its_queries_are_promql() {
    let dash = dashboard();
    assert_eq!(dash["uid"], "lookout-ingester");
    let panels = dash["panels"].as_array().expect("panels");
    let ids: BTreeSet<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    let queries = dashboard_queries(&dash);
    let names: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    for wanted in [
        "armada_lookout_ingester_v2_pulsar_messages_processed",
        "armada_lookout_ingester_v2_db_errors",
        "lookout_ingester_lag_seconds",
        "lookout_ingester_commit_latency_seconds_bucket",
        "lookout_ingester_batch_events_bucket",
        "lookout_ingester_dead_letters_total",
        "lookout_ingester_db_errors_total",
        "lookout_ingester_ready",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(
            names.contains(wanted),
            "the dashboard does not show {wanted}"
        );
    }
    // promtool parses each query as a recording rule's expression.
    let rules: Vec<serde_json::Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| serde_json::json!({"record": format!("dashboard_query_{i}"), "expr": as_promql(q)}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("dashboard.yaml"),
        serde_yaml::to_string(&file).expect("yaml"),
    )
    .expect("write");
    run_promtool(dir.path(), &["check", "rules", "dashboard.yaml"]);
}

#[test]
fn metric_names_are_read_from_promql() {
    let got = metric_names(
        r#"sum by (job, instance) (rate(a_total{job="x", le=~"1|b"}[5m])) < 0.2 * max without (le) (b:c_bucket offset 5m) and on (job) time() - d{x='y'} > 1e3 or histogram_quantile(0.9, e[$__rate_interval])"#,
    );
    let want: BTreeSet<String> = ["a_total", "b:c_bucket", "d", "e"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
}

/// The mounted config as it is (plus a second file for the two paths that
/// exist only in the pod) runs against a real database and broker: no
/// warning about it, ingests, answers 200 on the paths the Deployment's
/// probes ask for, and exposes every metric the dashboard and the alert
/// rules use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounted_config_runs_and_exposes_every_metric_dashboard_and_rules_use() {
    let objects = objects();
    let (_, config_text) = mounted_config(&objects);
    let broker = Broker::start().await;
    let seqs = lookout_ingester::sample::generate(47, 40);
    let expected = baseline(&seqs, broker.dir.path()).await;
    broker.publish("events", payloads(&seqs)).await;
    let db = TestDb::migrated().await;

    let dir = broker.dir.path();
    let config = dir.join("application_config.yaml");
    std::fs::write(&config, &config_text).expect("write");
    // What Kubernetes mounts: the password file (trust auth ignores its
    // content) and the spool's volume.
    let password = dir.join("password");
    std::fs::write(&password, "not-needed\n").expect("write");
    let pod_paths = dir.join("pod-paths.yaml");
    std::fs::write(
        &pod_paths,
        format!(
            "postgres:\n  passwordFile: {}\ndeadLetterSpool: {}\n",
            password.display(),
            dir.join("spool.jsonl").display()
        ),
    )
    .expect("write");
    let port = free_port();
    let port_text = port.to_string();
    let broker_url = broker.url();
    let args = [
        "run",
        "--config",
        config.to_str().expect("utf-8 path"),
        "--config",
        pod_paths.to_str().expect("utf-8 path"),
        "--database-url",
        &db.url,
        "--pulsar-url",
        &broker_url,
        "--metrics-port",
        &port_text,
    ];
    let mut ing = Ingester::spawn_args(&args, dir.join("ingester.log"));

    let started = Instant::now();
    // The paths the Deployment's probes ask for, readiness first.
    let c = container(object(&objects, "Deployment"));
    let probe_path = |probe: &str| s(&c[probe]["httpGet"]["path"]).to_string();
    let ready_path = probe_path("readinessProbe");
    while http_get(port, &ready_path).await.0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{ready_path} never answered 200\n{}",
            ing.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for probe in ["startupProbe", "livenessProbe"] {
        let path = probe_path(probe);
        assert_eq!(http_get(port, &path).await.0, 200, "{probe} {path}");
    }
    wait_equal(&db.url, &expected, Duration::from_secs(60), Some(&ing)).await;
    let (status, exposition) = http_get(port, "/metrics").await;
    assert_eq!(status, 200);
    let exposed = exposed_names(&exposition);

    let mut used = BTreeSet::new();
    for query in dashboard_queries(&dashboard()) {
        used.extend(metric_names(&query));
    }
    for rule in rules() {
        used.extend(metric_names(s(&rule["expr"])));
    }
    // `up` is the scrape's own series, not the target's.
    used.remove("up");
    let missing: Vec<&String> = used.difference(&exposed).collect();

    ing.terminate(Duration::from_secs(15)).await;
    let log = ing.log_text();
    // Our own warnings (an unknown or deprecated key, a missing file, …);
    // the Pulsar client's retry notices against pulsar-lite are not ours.
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains(" WARN lookout_ingester") || l.contains(" ERROR ") || l.starts_with("error:")
        })
        .collect();
    assert!(
        complaints.is_empty() && missing.is_empty(),
        "run complained about the mounted config: {complaints:#?}\n\
         the dashboard or the alert rules use metrics /metrics does not expose: {missing:?}"
    );
    db.drop_db().await;
}
