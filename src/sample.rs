//! Synthetic Armada event streams: builders for single events, and a
//! deterministic generator of whole job life cycles. Used by the tests, the
//! benchmark and `lookout-ingester sample` (which writes the bundled sample
//! recording). Nothing here is used on the ingestion path.

use std::path::Path;

use prost::Message as _;
use prost_types::Timestamp;

use crate::proto::armadaevents as ev;
use crate::proto::k8s;
use crate::source::file::RecordWriter;
use ev::event_sequence::{event::Event as Kind, Event};

/// A timestamp `secs` seconds after 2026-01-01T00:00:00Z.
pub fn ts(secs: i64) -> Timestamp {
    Timestamp {
        seconds: 1_767_225_600 + secs,
        nanos: 0,
    }
}

pub fn event(created: Option<Timestamp>, kind: Kind) -> Event {
    Event {
        created,
        event: Some(kind),
    }
}

pub fn sequence(queue: &str, jobset: &str, user: &str, events: Vec<Event>) -> ev::EventSequence {
    ev::EventSequence {
        queue: queue.into(),
        job_set_name: jobset.into(),
        user_id: user.into(),
        groups: vec![],
        events,
    }
}

pub fn entry(k: &str, v: &str) -> ev::StringEntry {
    ev::StringEntry {
        key: k.into(),
        value: v.into(),
    }
}

/// One container for [`encode_pod_spec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ContainerDef<'a> {
    pub name: &'a str,
    /// (resource name, quantity text)
    pub requests: &'a [(&'a str, &'a str)],
    pub limits: &'a [(&'a str, &'a str)],
    /// `Some("Always")` on an init container makes it a native sidecar.
    pub restart_policy: Option<&'a str>,
}

/// Encodes a Kubernetes PodSpec with the given containers, init containers
/// and priority class (for tests and sample data). Entries are written in
/// the order given.
pub fn encode_pod_spec(
    containers: &[ContainerDef<'_>],
    init_containers: &[ContainerDef<'_>],
    priority_class: Option<&str>,
) -> Vec<u8> {
    let entries = |list: &[(&str, &str)]| -> Vec<k8s::ResourceEntry> {
        list.iter()
            .map(|(name, value)| k8s::ResourceEntry {
                key: Some(name.as_bytes().to_vec()),
                value: Some(k8s::RawQuantity {
                    string: Some(value.as_bytes().to_vec()),
                }),
            })
            .collect()
    };
    let container = |c: &ContainerDef<'_>| k8s::Container {
        name: Some(c.name.as_bytes().to_vec()),
        resources: Some(k8s::ContainerResources {
            limits: entries(c.limits),
            requests: entries(c.requests),
        }),
        restart_policy: c.restart_policy.map(|p| p.as_bytes().to_vec()),
    };
    k8s::PodSpec {
        containers: containers.iter().map(container).collect(),
        init_containers: init_containers.iter().map(container).collect(),
        priority_class_name: priority_class.map(|p| p.as_bytes().to_vec()),
    }
    .encode_to_vec()
}

/// Encodes a Kubernetes PodSpec whose containers have the given names and
/// requests, with an optional priority class (for tests and sample data).
pub fn pod_spec_bytes(
    containers: &[(&str, &[(&str, &str)])],
    priority_class: Option<&str>,
) -> Vec<u8> {
    let defs: Vec<ContainerDef<'_>> = containers
        .iter()
        .map(|&(name, requests)| ContainerDef {
            name,
            requests,
            ..ContainerDef::default()
        })
        .collect();
    encode_pod_spec(&defs, &[], priority_class)
}

/// A SubmitJob with one container requesting `requests`.
pub fn submit(
    job_id: &str,
    namespace: &str,
    priority: u32,
    requests: &[(&str, &str)],
    priority_class: Option<&str>,
    annotations: &[(&str, &str)],
) -> Kind {
    let pod = pod_spec_bytes(&[("main", requests)], priority_class);
    Kind::SubmitJob(ev::SubmitJob {
        job_id: job_id.into(),
        deduplication_id: format!("dedup-{job_id}").into_bytes(),
        priority,
        object_meta: Some(ev::ObjectMeta {
            namespace: namespace.into(),
            annotations: annotations.iter().map(|(k, v)| entry(k, v)).collect(),
            labels: vec![entry("app", "sample")],
            ..Default::default()
        }),
        main_object: Some(ev::KubernetesMainObject {
            object_meta: None,
            object: Some(ev::kubernetes_main_object::Object::PodSpec(
                ev::PodSpecWithAvoidList {
                    pod_spec: Some(pod),
                    node_avoidlist: vec![],
                },
            )),
        }),
        ..Default::default()
    })
}

pub fn leased(job_id: &str, run_id: &str, cluster: &str, node: &str, pool: &str) -> Kind {
    Kind::JobRunLeased(ev::JobRunLeased {
        job_id: job_id.into(),
        run_id: run_id.into(),
        executor_id: cluster.into(),
        node_id: node.into(),
        pool: pool.into(),
        ..Default::default()
    })
}

pub fn assigned(job_id: &str, run_id: &str) -> Kind {
    Kind::JobRunAssigned(ev::JobRunAssigned {
        job_id: job_id.into(),
        run_id: run_id.into(),
        ..Default::default()
    })
}

fn pod_info(node: &str) -> ev::KubernetesResourceInfo {
    ev::KubernetesResourceInfo {
        object_meta: None,
        info: Some(ev::kubernetes_resource_info::Info::PodInfo(ev::PodInfo {
            node_name: node.into(),
            pod_number: 0,
        })),
    }
}

pub fn running(job_id: &str, run_id: &str, node: Option<&str>) -> Kind {
    Kind::JobRunRunning(ev::JobRunRunning {
        job_id: job_id.into(),
        run_id: run_id.into(),
        resource_infos: node.map(pod_info).into_iter().collect(),
        ..Default::default()
    })
}

pub fn run_succeeded(job_id: &str, run_id: &str) -> Kind {
    Kind::JobRunSucceeded(ev::JobRunSucceeded {
        job_id: job_id.into(),
        run_id: run_id.into(),
        ..Default::default()
    })
}

pub fn job_succeeded(job_id: &str) -> Kind {
    Kind::JobSucceeded(ev::JobSucceeded {
        job_id: job_id.into(),
        ..Default::default()
    })
}

pub fn error(
    terminal: bool,
    reason: ev::error::Reason,
    failure: Option<ev::FailureInfo>,
) -> ev::Error {
    ev::Error {
        terminal,
        reason: Some(reason),
        failure_info: failure,
        ..Default::default()
    }
}

/// An error as a newer Armada sends it: category and subcategory (fields 16
/// and 17) instead of a FailureInfo.
pub fn categorised_error(
    terminal: bool,
    reason: ev::error::Reason,
    category: &str,
    subcategory: &str,
) -> ev::Error {
    ev::Error {
        terminal,
        reason: Some(reason),
        failure_category: category.into(),
        failure_subcategory: subcategory.into(),
        ..Default::default()
    }
}

/// `submit` with SubmitJob's `external_job_uri` (field 16) set.
pub fn with_external_job_uri(kind: Kind, uri: &str) -> Kind {
    match kind {
        Kind::SubmitJob(s) => Kind::SubmitJob(ev::SubmitJob {
            external_job_uri: uri.into(),
            ..s
        }),
        other => other,
    }
}

pub fn pod_error(message: &str, node: &str, exit_codes: &[i32]) -> ev::error::Reason {
    ev::error::Reason::PodError(ev::PodError {
        message: message.into(),
        node_name: node.into(),
        debug_message: format!("debug: {message}").into_bytes(),
        container_errors: exit_codes
            .iter()
            .map(|&c| ev::ContainerError {
                exit_code: c,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
}

pub fn failure(
    exit_code: i32,
    message: &str,
    categories: &[&str],
    container: &str,
) -> ev::FailureInfo {
    ev::FailureInfo {
        exit_code,
        termination_message: message.into(),
        categories: categories.iter().map(|c| c.as_bytes().to_vec()).collect(),
        container_name: container.into(),
    }
}

pub fn run_errors(job_id: &str, run_id: &str, errors: Vec<ev::Error>) -> Kind {
    Kind::JobRunErrors(ev::JobRunErrors {
        job_id: job_id.into(),
        run_id: run_id.into(),
        errors,
    })
}

pub fn job_errors(job_id: &str, errors: Vec<ev::Error>) -> Kind {
    Kind::JobErrors(ev::JobErrors {
        job_id: job_id.into(),
        errors,
    })
}

pub fn cancelled(job_id: &str, reason: &str, user: &str) -> Kind {
    Kind::CancelledJob(ev::CancelledJob {
        job_id: job_id.into(),
        reason: reason.into(),
        requestor: user.into(),
    })
}

pub fn run_cancelled(job_id: &str, run_id: &str) -> Kind {
    Kind::JobRunCancelled(ev::JobRunCancelled {
        job_id: job_id.into(),
        run_id: run_id.into(),
        ..Default::default()
    })
}

/// A run cancellation as a newer Armada sends it, with reason and requestor.
pub fn run_cancelled_by(job_id: &str, run_id: &str, reason: &str, requestor: &str) -> Kind {
    Kind::JobRunCancelled(ev::JobRunCancelled {
        job_id: job_id.into(),
        run_id: run_id.into(),
        reason: reason.into(),
        requestor: requestor.into(),
    })
}

pub fn run_preempted(job_id: &str, run_id: &str, reason: &str) -> Kind {
    Kind::JobRunPreempted(ev::JobRunPreempted {
        preempted_job_id: job_id.into(),
        preempted_run_id: run_id.into(),
        reason: reason.into(),
        ..Default::default()
    })
}

/// A preemption as a newer Armada sends it, naming the preempting job and
/// who asked.
pub fn run_preempted_by(
    job_id: &str,
    run_id: &str,
    reason: &str,
    preempting_job_id: &str,
    requestor: &str,
) -> Kind {
    Kind::JobRunPreempted(ev::JobRunPreempted {
        preempted_job_id: job_id.into(),
        preempted_run_id: run_id.into(),
        reason: reason.into(),
        preempting_job_id: preempting_job_id.into(),
        requestor: requestor.into(),
    })
}

/// Event 26: debug detail about how a run ended.
pub fn run_debug_info(job_id: &str, run_id: &str, message: &str) -> Kind {
    Kind::JobRunTerminatedDebugInfo(ev::JobRunTerminatedDebugInfo {
        job_id: job_id.into(),
        run_id: run_id.into(),
        debug_message: message.into(),
    })
}

pub fn reprioritised(job_id: &str, priority: u32) -> Kind {
    Kind::ReprioritisedJob(ev::ReprioritisedJob {
        job_id: job_id.into(),
        priority,
        ..Default::default()
    })
}

pub fn requeued(job_id: &str) -> Kind {
    Kind::JobRequeued(ev::JobRequeued {
        job_id: job_id.into(),
        update_sequence_number: 1,
    })
}

pub fn ingress(job_id: &str, run_id: &str, addresses: &[(i32, &str)]) -> Kind {
    Kind::StandaloneIngressInfo(ev::StandaloneIngressInfo {
        job_id: job_id.into(),
        run_id: run_id.into(),
        ingress_addresses: addresses
            .iter()
            .map(|(p, a)| ev::IngressAddress {
                port: *p,
                address: a.as_bytes().to_vec(),
            })
            .collect(),
        ..Default::default()
    })
}

/// A small deterministic PRNG (xorshift64*), so generated streams are the
/// same for the same seed on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// How one generated job ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Succeeded,
    Failed,
    Cancelled,
    Preempted,
    Rejected,
    StillRunning,
}

/// Generates `jobs` job life cycles across a few queues and job sets, one
/// sequence per life-cycle step (as Armada publishes them), interleaved
/// between jobs in a deterministic order.
pub fn generate(seed: u64, jobs: usize) -> Vec<ev::EventSequence> {
    generate_jobs(seed, jobs).sequences
}

/// What [`write_file`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub records: u64,
    pub events: usize,
}

/// Writes a [`Workload`](crate::workload::Workload) of `jobs` jobs from
/// `seed` to `out` as a recording (`sample`), streaming: each sequence is
/// encoded and written as it is generated, so memory follows the jobs in
/// flight, not the file.
pub fn write_file(out: &Path, seed: u64, jobs: usize, gzip: bool) -> anyhow::Result<Written> {
    let opts = crate::workload::Options {
        seed,
        events: u64::MAX,
        max_jobs: Some(jobs as u64),
        ..Default::default()
    };
    write_workload(out, opts, gzip)
}

/// Writes the workload `opts` describes to `out` as a recording.
pub fn write_workload(
    out: &Path,
    opts: crate::workload::Options,
    gzip: bool,
) -> anyhow::Result<Written> {
    let mut w = RecordWriter::create(out, gzip)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
    let mut events = 0usize;
    let mut buf = Vec::new();
    for seq in crate::workload::Workload::new(opts) {
        events += seq.events.len();
        buf.clear();
        seq.encode(&mut buf)?;
        w.write_record(&buf)?;
    }
    let records = w.records;
    w.finish()?;
    Ok(Written { records, events })
}

/// A generated stream and, for each job, its id, run id and fate (what the
/// tables should end up saying about it).
#[derive(Debug, Clone)]
pub struct Generated {
    pub sequences: Vec<ev::EventSequence>,
    pub jobs: Vec<GeneratedJob>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedJob {
    pub job_id: String,
    pub run_id: String,
    pub fate: Fate,
    /// The exit code of a failed job's run.
    pub exit_code: Option<i32>,
}

/// Like [`generate`], with the expected outcome of every job.
pub fn generate_jobs(seed: u64, jobs: usize) -> Generated {
    let (sequences, jobs) = build(seed, jobs, |steps| steps);
    Generated { sequences, jobs }
}

/// The generator of test fixtures: each job's steps go through `keep` as
/// soon as they are made, then the kept steps are interleaved.
fn build<T>(
    seed: u64,
    jobs: usize,
    mut keep: impl FnMut(Vec<ev::EventSequence>) -> Vec<T>,
) -> (Vec<T>, Vec<GeneratedJob>) {
    let mut expected = Vec::with_capacity(jobs);
    let mut rng = Rng::new(seed);
    let queues = ["analytics", "research", "batch-prod"];
    let mut per_job: Vec<Vec<T>> = Vec::with_capacity(jobs);
    for j in 0..jobs {
        let queue = queues[j % queues.len()];
        let jobset = format!("{queue}-set-{}", j % 7);
        let user = format!("user{}", j % 5);
        let job_id = format!("01j{seed:05}{j:020}");
        let run_id = format!(
            "{:08x}-{:04x}-4000-8000-{j:012}",
            seed & 0xffff_ffff,
            (seed >> 32) & 0xffff
        );
        let t0 = (j as i64) * 3;
        let node = format!("node-{}", rng.below(16));
        let cluster = format!("cluster-{}", rng.below(3));
        let cpu = ["100m", "500m", "1", "2", "1.5"][rng.below(5) as usize];
        let mem = ["128Mi", "1Gi", "2Gi", "4G", "512Mi"][rng.below(5) as usize];
        let gpu = if rng.below(10) == 0 { "1" } else { "0" };
        let fate = match rng.below(20) {
            0..=9 => Fate::Succeeded,
            10..=13 => Fate::Failed,
            14..=15 => Fate::Cancelled,
            16 => Fate::Preempted,
            17 => Fate::Rejected,
            _ => Fate::StillRunning,
        };
        let seq = |secs: i64, kind: Kind| {
            sequence(queue, &jobset, &user, vec![event(Some(ts(secs)), kind)])
        };
        let mut steps = vec![seq(
            t0,
            submit(
                &job_id,
                "default",
                (j % 4) as u32,
                &[("cpu", cpu), ("memory", mem), ("nvidia.com/gpu", gpu)],
                Some("armada-default"),
                &[
                    ("armadaproject.io/team", "sample"),
                    (
                        "armadaproject.io/externalJobUri",
                        "https://example.invalid/job",
                    ),
                ],
            ),
        )];
        if fate == Fate::Rejected {
            steps.push(seq(
                t0 + 1,
                job_errors(
                    &job_id,
                    vec![error(
                        true,
                        ev::error::Reason::JobRejected(ev::JobRejected {
                            message: b"queue does not exist".to_vec(),
                        }),
                        None,
                    )],
                ),
            ));
            per_job.push(keep(steps));
            expected.push(GeneratedJob {
                job_id,
                run_id,
                fate,
                exit_code: None,
            });
            continue;
        }
        steps.push(seq(
            t0 + 1,
            leased(&job_id, &run_id, &cluster, &node, "cpu-pool"),
        ));
        steps.push(seq(t0 + 2, assigned(&job_id, &run_id)));
        steps.push(seq(t0 + 3, running(&job_id, &run_id, Some(&node))));
        let mut exit_code = None;
        match fate {
            Fate::Succeeded => {
                steps.push(seq(t0 + 10, run_succeeded(&job_id, &run_id)));
                steps.push(seq(t0 + 10, job_succeeded(&job_id)));
            }
            Fate::Failed => {
                let code = [1, 2, 137, 139][rng.below(4) as usize];
                exit_code = Some(code);
                let cats: &[&str] = if code == 137 {
                    &["oom"]
                } else {
                    &["user-error"]
                };
                let fi = failure(code, &format!("exited with {code}"), cats, "main");
                let err = error(
                    true,
                    pod_error(
                        &format!("container main failed with {code}"),
                        &node,
                        &[0, code],
                    ),
                    Some(fi),
                );
                steps.push(seq(t0 + 9, run_errors(&job_id, &run_id, vec![err.clone()])));
                steps.push(seq(t0 + 9, job_errors(&job_id, vec![err])));
            }
            Fate::Cancelled => {
                steps.push(seq(t0 + 5, cancelled(&job_id, "no longer needed", &user)));
                steps.push(seq(t0 + 5, run_cancelled(&job_id, &run_id)));
            }
            Fate::Preempted => {
                steps.push(seq(
                    t0 + 6,
                    run_preempted(&job_id, &run_id, "preempted by a higher priority job"),
                ));
                let err = error(
                    true,
                    ev::error::Reason::JobRunPreemptedError(ev::JobRunPreemptedError::default()),
                    None,
                );
                steps.push(seq(t0 + 6, job_errors(&job_id, vec![err])));
            }
            Fate::StillRunning | Fate::Rejected => {}
        }
        per_job.push(keep(steps));
        expected.push(GeneratedJob {
            job_id,
            run_id,
            fate,
            exit_code,
        });
    }
    // Interleave: take steps round-robin across jobs, as a live topic would
    // carry many job sets at once; each job's own steps stay in order.
    let mut out = Vec::new();
    let mut cursors: Vec<std::vec::IntoIter<T>> = per_job.into_iter().map(Vec::into_iter).collect();
    loop {
        let mut any = false;
        for c in cursors.iter_mut() {
            if let Some(s) = c.next() {
                out.push(s);
                any = true;
            }
        }
        if !any {
            break;
        }
    }
    (out, expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_file_writes_the_workload_of_the_seed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("s.bin");
        let w = write_file(&out, 3, 200, false).expect("write");
        let opts = crate::workload::Options {
            seed: 3,
            events: u64::MAX,
            max_jobs: Some(200),
            ..Default::default()
        };
        let mut r = crate::source::file::open(&out, Default::default()).expect("open");
        let mut records = 0u64;
        let mut events = 0usize;
        let mut jobs = 0usize;
        for seq in crate::workload::Workload::new(opts) {
            records += 1;
            events += seq.events.len();
            jobs += seq
                .events
                .iter()
                .filter(|e| matches!(e.event, Some(Kind::SubmitJob(_))))
                .count();
            assert_eq!(r.next_record().expect("read"), Some(seq.encode_to_vec()));
        }
        assert_eq!(r.next_record().expect("read"), None);
        assert_eq!((w.records, w.events, jobs), (records, events, 200));
    }
}
