//! Builds the `api.Job` stored (compressed by the caller) in `job.job_spec`
//! from a `SubmitJob` event, and the resource facts of the job row.
//!
//! The api.Job has the fields upstream's `ApiJobFromLogSubmitJob` sets:
//! - id, client_id (the deduplication id), namespace, labels and annotations
//!   from the event; owner, queue and job set from the context; priority as
//!   a double; created from the context; no queue ownership groups;
//! - the pod specs: the main object's first, then those of the extra
//!   objects in order; exactly one goes into `pod_spec`, several into
//!   `pod_specs`. They are carried as the event's bytes, not re-encoded;
//! - the extra ingress and service objects as Kubernetes Ingress / Service
//!   objects: metadata from the object's metadata, spec carried as the
//!   event's bytes;
//! - `scheduling_resource_requirements` computed from the main pod spec as
//!   upstream's `SchedulingResourceRequirementsFromPodSpec` does: requests
//!   and limits summed over the containers and native-sidecar init
//!   containers (restartPolicy `Always`), then raised to any larger value of
//!   a classic init container. Quantities are written as Kubernetes writes
//!   them (see [`Quantity`]'s `Display`).
//!
//! The row's facts come from the main pod spec alone, from the requests of
//! its containers (not init containers), as upstream's `getJobResources`:
//! cpu in thousandths (`MilliValue`), memory, ephemeral storage and
//! `nvidia.com/gpu` in units (`Value`), all rounded away from zero.
//!
//! # Where upstream fails
//!
//! Upstream panics or drops the job for a submission without a main object,
//! with a main object that has no pod spec, without object metadata, or with
//! an extra object that is not a pod spec, ingress or service (a ConfigMap,
//! or a kind this build does not know). Here the job is built from what there
//! is — no pod spec means zero resources and no pod spec in the api.Job; an
//! unusable extra object is left out — and each such case adds a sentence to
//! [`BuiltJob::problems`]. So does:
//! - a main pod spec whose bytes do not decode: zero resources and no
//!   priority class, but the bytes are still carried into the api.Job;
//! - a request or limit that is not a valid quantity (upstream cannot decode
//!   such an event at all): that resource of that container is left out of
//!   the facts and the scheduling requirements (as is any earlier entry for
//!   the same resource in the same container);
//! - an extra pod-spec object without pod spec bytes: left out.
//!
//! # Arithmetic
//!
//! Negative quantities are legal Kubernetes syntax and count as what they
//! are, as upstream counts them: they are summed with their sign (so they
//! lower a total), and a negative classic init container never raises the
//! scheduling requirement. Totals saturate at the bounds of `i64` instead of
//! wrapping as upstream's int64 sums do, and per-container values saturate
//! as [`Quantity::milli_value`] and [`Quantity::value`] document.
//!
//! Text from the event (ids, names, labels, annotations, keys) is decoded
//! leniently: invalid UTF-8 becomes U+FFFD. A repeated label or annotation
//! key keeps its last value, as a protobuf map does.

use std::collections::BTreeMap;

use prost::Message;

use super::quantity::Quantity;
use crate::proto::armadaevents::{self as ev, kubernetes_main_object, kubernetes_object};
use crate::proto::{api, k8s};

/// Resource names the job row records.
pub const CPU: &str = "cpu";
pub const MEMORY: &str = "memory";
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
pub const GPU: &str = "nvidia.com/gpu";

/// An init container with this restart policy is a native sidecar.
const SIDECAR_RESTART_POLICY: &[u8] = b"Always";

/// Problems quote values up to this many characters.
const QUOTE_LIMIT: usize = 64;

/// The encoding Kubernetes' Go code writes for an empty IngressStatus or
/// ServiceStatus (field 1, loadBalancer, an empty message). Upstream's Ingress
/// and Service always carry it; so do ours, so that the bytes match.
const EMPTY_STATUS: [u8; 2] = [0x0a, 0x00];

/// Who submitted the job, where, and when.
pub struct SubmitContext<'a> {
    pub owner: &'a str,
    pub queue: &'a str,
    pub jobset: &'a str,
    pub created: prost_types::Timestamp,
}

/// Resource facts of the main pod, for the job row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MainPodFacts {
    /// Sum of the containers' cpu requests, in thousandths.
    pub cpu_millis: i64,
    /// Sum of the containers' memory requests, in bytes.
    pub memory: i64,
    /// Sum of the containers' ephemeral-storage requests, in bytes.
    pub ephemeral_storage: i64,
    /// Sum of the containers' nvidia.com/gpu requests.
    pub gpu: i64,
    /// The pod spec's priorityClassName, if not empty; not truncated.
    pub priority_class: Option<String>,
}

/// The result of [`build`].
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltJob {
    pub api_job: api::Job,
    /// `api_job`, protobuf-encoded (deterministic: maps are ordered).
    pub encoded: Vec<u8>,
    pub facts: MainPodFacts,
    /// The job's namespace (from the event's object metadata), as in
    /// `api_job.namespace`.
    pub namespace: String,
    /// What could not be used as it is, one sentence each.
    pub problems: Vec<String>,
}

/// Builds the api.Job and the row facts for one SubmitJob. Never fails:
/// whatever cannot be used is reported in [`BuiltJob::problems`].
pub fn build(ctx: &SubmitContext<'_>, submit: &ev::SubmitJob) -> BuiltJob {
    let mut problems = Vec::new();

    let meta = submit.object_meta.as_ref();
    if meta.is_none() {
        problems.push("the submission has no object metadata: the job has no namespace, labels or annotations".into());
    }
    let namespace = meta.map(|m| lossy(&m.namespace)).unwrap_or_default();
    let labels = string_map(meta.map_or(&[][..], |m| m.labels.as_slice()));
    let annotations = string_map(meta.map_or(&[][..], |m| m.annotations.as_slice()));

    let main_bytes = main_pod_spec(submit, &mut problems);
    let mut pod_specs: Vec<Vec<u8>> = main_bytes.iter().map(|b| b.to_vec()).collect();
    let mut k8s_ingress = Vec::new();
    let mut k8s_service = Vec::new();
    for (i, object) in submit.objects.iter().enumerate() {
        match &object.object {
            Some(kubernetes_object::Object::PodSpec(p)) => match &p.pod_spec {
                Some(bytes) => pod_specs.push(bytes.clone()),
                None => problems.push(format!(
                    "extra object {i} is a pod spec object without a pod spec; left out"
                )),
            },
            Some(kubernetes_object::Object::Ingress(spec)) => k8s_ingress.push(k8s::Ingress {
                metadata: Some(k8s_object_meta(object.object_meta.as_ref())),
                spec: Some(spec.clone()),
                status: Some(EMPTY_STATUS.to_vec()),
            }),
            Some(kubernetes_object::Object::Service(spec)) => k8s_service.push(k8s::Service {
                metadata: Some(k8s_object_meta(object.object_meta.as_ref())),
                spec: Some(spec.clone()),
                status: Some(EMPTY_STATUS.to_vec()),
            }),
            Some(kubernetes_object::Object::ConfigMap(_)) => problems.push(format!(
                "extra object {i} is a ConfigMap, which jobs do not support; left out"
            )),
            None => problems.push(format!(
                "extra object {i} is of an unknown or missing kind; left out"
            )),
        }
    }

    let (facts, scheduling) = match main_bytes {
        Some(bytes) => main_pod(bytes, &mut problems),
        None => (
            MainPodFacts::default(),
            k8s::ResourceRequirements::default(),
        ),
    };

    // Exactly one pod spec goes into pod_spec, several into pod_specs.
    let (pod_spec, pod_specs) = if pod_specs.len() == 1 {
        (pod_specs.pop(), Vec::new())
    } else {
        (None, pod_specs)
    };

    let api_job = api::Job {
        id: lossy(&submit.job_id),
        client_id: lossy(&submit.deduplication_id),
        job_set_id: ctx.jobset.to_string(),
        queue: ctx.queue.to_string(),
        namespace: namespace.clone(),
        labels,
        annotations,
        owner: ctx.owner.to_string(),
        queue_ownership_user_groups: Vec::new(),
        priority: f64::from(submit.priority),
        pod_spec,
        pod_specs,
        scheduling_resource_requirements: Some(scheduling),
        created: Some(ctx.created),
        k8s_ingress,
        k8s_service,
        ..Default::default()
    };
    let encoded = api_job.encode_to_vec();
    BuiltJob {
        api_job,
        encoded,
        facts,
        namespace,
        problems,
    }
}

/// The main object's pod spec bytes, or why there are none.
fn main_pod_spec<'a>(submit: &'a ev::SubmitJob, problems: &mut Vec<String>) -> Option<&'a [u8]> {
    let Some(main) = submit.main_object.as_ref() else {
        problems.push(
            "the submission has no main object: the job has no pod spec and zero resources".into(),
        );
        return None;
    };
    match &main.object {
        Some(kubernetes_main_object::Object::PodSpec(p)) => {
            match p.pod_spec.as_deref() {
                Some(bytes) => Some(bytes),
                None => {
                    problems.push("the main object has no pod spec: the job has no pod spec and zero resources".into());
                    None
                }
            }
        }
        None => {
            problems.push(
                "the main object is of an unknown or missing kind: the job has no pod spec and zero resources".into(),
            );
            None
        }
    }
}

/// A container's usable requests and limits, by resource name.
struct Resources {
    requests: BTreeMap<String, Quantity>,
    limits: BTreeMap<String, Quantity>,
    native_sidecar: bool,
}

/// Decodes the main pod spec and computes the row facts and the scheduling
/// requirements.
fn main_pod(bytes: &[u8], problems: &mut Vec<String>) -> (MainPodFacts, k8s::ResourceRequirements) {
    let spec = match k8s::PodSpec::decode(bytes) {
        Ok(spec) => spec,
        Err(err) => {
            problems.push(format!(
                "the main pod spec cannot be decoded ({err}): resources are taken as zero; its bytes are kept"
            ));
            return (
                MainPodFacts::default(),
                k8s::ResourceRequirements::default(),
            );
        }
    };
    let containers: Vec<Resources> = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| container_resources(c, "container", i, problems))
        .collect();
    let init_containers: Vec<Resources> = spec
        .init_containers
        .iter()
        .enumerate()
        .map(|(i, c)| container_resources(c, "init container", i, problems))
        .collect();

    let total = |name: &str, scaled: fn(&Quantity) -> i64| {
        containers
            .iter()
            .filter_map(|c| c.requests.get(name))
            .fold(0i64, |acc, q| acc.saturating_add(scaled(q)))
    };
    let facts = MainPodFacts {
        cpu_millis: total(CPU, Quantity::milli_value),
        memory: total(MEMORY, Quantity::value),
        ephemeral_storage: total(EPHEMERAL_STORAGE, Quantity::value),
        gpu: total(GPU, Quantity::value),
        priority_class: spec
            .priority_class_name
            .as_deref()
            .filter(|b| !b.is_empty())
            .map(lossy),
    };

    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    for c in &containers {
        add_all(&mut requests, &c.requests);
        add_all(&mut limits, &c.limits);
    }
    for c in &init_containers {
        if c.native_sidecar {
            add_all(&mut requests, &c.requests);
            add_all(&mut limits, &c.limits);
        } else {
            raise_all(&mut requests, &c.requests);
            raise_all(&mut limits, &c.limits);
        }
    }
    let scheduling = k8s::ResourceRequirements {
        limits: to_k8s(limits),
        requests: to_k8s(requests),
    };
    (facts, scheduling)
}

/// Parses one container's requests and limits; a later entry for the same
/// resource replaces an earlier one, as in a protobuf map.
fn container_resources(
    c: &k8s::Container,
    kind: &str,
    index: usize,
    problems: &mut Vec<String>,
) -> Resources {
    let who = match c.name.as_deref() {
        Some(name) if !name.is_empty() => format!("{kind} {index} ({})", quote(&lossy(name))),
        _ => format!("{kind} {index}"),
    };
    let empty = k8s::ContainerResources::default();
    let resources = c.resources.as_ref().unwrap_or(&empty);
    Resources {
        requests: parse_entries(&resources.requests, &who, "request", problems),
        limits: parse_entries(&resources.limits, &who, "limit", problems),
        native_sidecar: c.restart_policy.as_deref() == Some(SIDECAR_RESTART_POLICY),
    }
}

fn parse_entries(
    entries: &[k8s::ResourceEntry],
    who: &str,
    what: &str,
    problems: &mut Vec<String>,
) -> BTreeMap<String, Quantity> {
    let mut out = BTreeMap::new();
    for entry in entries {
        let name = lossy(entry.key.as_deref().unwrap_or_default());
        // A missing value or string is Kubernetes' zero quantity.
        let text = entry.value.as_ref().and_then(|v| v.string.as_deref());
        let parsed = match text {
            None => Ok(Quantity::zero()),
            Some(raw) => match std::str::from_utf8(raw) {
                Ok(s) => Quantity::parse(s).map_err(|e| (lossy(raw), e.to_string())),
                Err(_) => Err((lossy(raw), "it is not UTF-8".to_string())),
            },
        };
        match parsed {
            Ok(q) => {
                out.insert(name, q);
            }
            Err((shown, why)) => {
                problems.push(format!(
                    "{who}: {what} {} = {} is not a valid quantity ({why}); left out",
                    quote(&name),
                    quote(&shown)
                ));
                out.remove(&name);
            }
        }
    }
    out
}

/// Adds every quantity of `src` into `dst`.
fn add_all(dst: &mut BTreeMap<String, Quantity>, src: &BTreeMap<String, Quantity>) {
    for (name, q) in src {
        let sum = match dst.get(name) {
            Some(current) => current + q,
            None => &Quantity::zero() + q,
        };
        dst.insert(name.clone(), sum);
    }
}

/// Raises each quantity of `dst` to the one in `src` where that is larger
/// (a missing entry counts as zero), keeping `src`'s quantity as it is.
fn raise_all(dst: &mut BTreeMap<String, Quantity>, src: &BTreeMap<String, Quantity>) {
    let zero = Quantity::zero();
    for (name, q) in src {
        if q > dst.get(name).unwrap_or(&zero) {
            dst.insert(name.clone(), q.clone());
        }
    }
}

fn to_k8s(m: BTreeMap<String, Quantity>) -> BTreeMap<String, k8s::Quantity> {
    m.into_iter()
        .map(|(name, q)| {
            let string = Some(q.to_string());
            (name, k8s::Quantity { string })
        })
        .collect()
}

/// Kubernetes metadata for an extra object, as upstream builds it
/// (namespace, name, uid from the kubernetes id, labels, annotations).
/// Kubernetes' Go code writes every non-pointer field even when empty; so
/// does this.
fn k8s_object_meta(meta: Option<&ev::ObjectMeta>) -> k8s::ObjectMeta {
    let text =
        |f: fn(&ev::ObjectMeta) -> &[u8]| Some(meta.map(|m| lossy(f(m))).unwrap_or_default());
    k8s::ObjectMeta {
        name: text(|m| m.name.as_slice()),
        generate_name: Some(String::new()),
        namespace: text(|m| m.namespace.as_slice()),
        self_link: Some(String::new()),
        uid: text(|m| m.kubernetes_id.as_slice()),
        resource_version: Some(String::new()),
        generation: Some(0),
        creation_timestamp: Some(k8s::Time::default()),
        labels: string_map(meta.map_or(&[][..], |m| m.labels.as_slice())),
        annotations: string_map(meta.map_or(&[][..], |m| m.annotations.as_slice())),
    }
}

/// A map from wire entries; a repeated key keeps its last value.
fn string_map(entries: &[ev::StringEntry]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|e| (lossy(&e.key), lossy(&e.value)))
        .collect()
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A value for a problem message: debug-quoted, shortened if long.
fn quote(s: &str) -> String {
    if s.chars().count() <= QUOTE_LIMIT {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(QUOTE_LIMIT).collect();
        format!("{head:?}… ({} bytes)", s.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{encode_pod_spec, pod_spec_bytes, ContainerDef};

    fn ts(seconds: i64) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos: 5 }
    }

    fn ctx() -> SubmitContext<'static> {
        SubmitContext {
            owner: "alice",
            queue: "q",
            jobset: "js",
            created: ts(1_700_000_000),
        }
    }

    fn entries(pairs: &[(&str, &str)]) -> Vec<ev::StringEntry> {
        pairs
            .iter()
            .map(|(k, v)| ev::StringEntry {
                key: k.as_bytes().to_vec(),
                value: v.as_bytes().to_vec(),
            })
            .collect()
    }

    fn meta(namespace: &str, name: &str, uid: &str) -> ev::ObjectMeta {
        ev::ObjectMeta {
            namespace: namespace.as_bytes().to_vec(),
            name: name.as_bytes().to_vec(),
            kubernetes_id: uid.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    fn pod_object(bytes: Option<Vec<u8>>) -> ev::PodSpecWithAvoidList {
        ev::PodSpecWithAvoidList {
            pod_spec: bytes,
            node_avoidlist: Vec::new(),
        }
    }

    fn submit_with(main: Option<Vec<u8>>, objects: Vec<ev::KubernetesObject>) -> ev::SubmitJob {
        ev::SubmitJob {
            job_id: b"01hjob".to_vec(),
            deduplication_id: b"dedup".to_vec(),
            priority: 7,
            object_meta: Some(ev::ObjectMeta {
                annotations: entries(&[("a", "1"), ("b", "2"), ("a", "3")]),
                labels: entries(&[("team", "x")]),
                ..meta("ns", "", "")
            }),
            main_object: Some(ev::KubernetesMainObject {
                object_meta: None,
                object: Some(kubernetes_main_object::Object::PodSpec(pod_object(main))),
            }),
            objects,
            ..Default::default()
        }
    }

    fn object(
        object_meta: Option<ev::ObjectMeta>,
        object: kubernetes_object::Object,
    ) -> ev::KubernetesObject {
        ev::KubernetesObject {
            object_meta,
            object: Some(object),
        }
    }

    fn decoded(built: &BuiltJob) -> api::Job {
        match api::Job::decode(built.encoded.as_slice()) {
            Ok(job) => job,
            Err(e) => panic!("encoded api.Job does not decode: {e}"),
        }
    }

    fn requests(built: &BuiltJob) -> BTreeMap<String, String> {
        quantities(built, |r| &r.requests)
    }

    fn limits(built: &BuiltJob) -> BTreeMap<String, String> {
        quantities(built, |r| &r.limits)
    }

    fn quantities(
        built: &BuiltJob,
        pick: fn(&k8s::ResourceRequirements) -> &BTreeMap<String, k8s::Quantity>,
    ) -> BTreeMap<String, String> {
        let r = built.api_job.scheduling_resource_requirements.as_ref();
        r.map(pick)
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.string.clone().unwrap_or_default()))
            .collect()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn job_fields_come_from_the_event_and_the_context() {
        let pod = pod_spec_bytes(&[("main", &[("cpu", "1")])], Some("armada-default"));
        let built = build(&ctx(), &submit_with(Some(pod.clone()), vec![]));
        assert!(built.problems.is_empty(), "{:?}", built.problems);
        let job = &built.api_job;
        assert_eq!(job.id, "01hjob");
        assert_eq!(job.client_id, "dedup");
        assert_eq!(job.queue, "q");
        assert_eq!(job.job_set_id, "js");
        assert_eq!(job.owner, "alice");
        assert_eq!(job.namespace, "ns");
        assert_eq!(built.namespace, "ns");
        assert_eq!(job.priority, 7.0);
        assert_eq!(job.created, Some(ts(1_700_000_000)));
        assert!(job.queue_ownership_user_groups.is_empty());
        assert_eq!(job.labels, map(&[("team", "x")]));
        // A repeated key keeps its last value.
        assert_eq!(job.annotations, map(&[("a", "3"), ("b", "2")]));
        assert_eq!(job.pod_spec.as_deref(), Some(pod.as_slice()));
        assert!(job.pod_specs.is_empty());
        assert!(job.k8s_ingress.is_empty() && job.k8s_service.is_empty());
        assert!(job.scheduler.is_empty() && job.ingress.is_empty() && job.services.is_empty());
        assert_eq!(
            built.facts.priority_class.as_deref(),
            Some("armada-default")
        );
        assert_eq!(built.facts.cpu_millis, 1000);
        assert_eq!(decoded(&built), built.api_job);
    }

    #[test]
    fn resources_are_summed_across_containers() {
        let pod = pod_spec_bytes(
            &[
                ("a", &[("cpu", "500m"), ("memory", "2Gi")]),
                (
                    "b",
                    &[
                        ("cpu", "1.5"),
                        ("memory", "1G"),
                        ("ephemeral-storage", "1Gi"),
                        ("nvidia.com/gpu", "1"),
                    ],
                ),
                ("c", &[("nvidia.com/gpu", "2"), ("example.com/foo", "3")]),
            ],
            None,
        );
        let built = build(&ctx(), &submit_with(Some(pod), vec![]));
        assert!(built.problems.is_empty(), "{:?}", built.problems);
        assert_eq!(
            built.facts,
            MainPodFacts {
                cpu_millis: 2000,
                memory: 2_147_483_648 + 1_000_000_000,
                ephemeral_storage: 1_073_741_824,
                gpu: 3,
                priority_class: None,
            }
        );
        assert_eq!(
            requests(&built),
            map(&[
                ("cpu", "2"),
                ("memory", "3147483648"),
                ("ephemeral-storage", "1Gi"),
                ("nvidia.com/gpu", "3"),
                ("example.com/foo", "3"),
            ])
        );
        assert!(limits(&built).is_empty());
    }

    #[test]
    fn cpu_rounds_up_per_container() {
        let pod = pod_spec_bytes(
            &[
                ("a", &[("cpu", "0.0001")]),
                ("b", &[("cpu", "1n"), ("memory", "0.5")]),
            ],
            None,
        );
        let built = build(&ctx(), &submit_with(Some(pod), vec![]));
        assert_eq!(built.facts.cpu_millis, 2);
        assert_eq!(built.facts.memory, 1);
        assert_eq!(requests(&built)["cpu"], "100001n");
    }

    #[test]
    fn scheduling_requirements_take_init_containers_into_account() {
        let containers = [
            ContainerDef {
                name: "main",
                requests: &[("cpu", "1"), ("memory", "1Gi")],
                limits: &[("cpu", "2"), ("memory", "1Gi")],
                restart_policy: None,
            },
            ContainerDef {
                name: "helper",
                requests: &[("cpu", "500m")],
                limits: &[("cpu", "500m")],
                restart_policy: None,
            },
        ];
        let init = [
            // Classic init container: larger cpu request wins, as written.
            ContainerDef {
                name: "setup",
                requests: &[
                    ("cpu", "2.500"),
                    ("memory", "512Mi"),
                    ("nvidia.com/gpu", "1"),
                ],
                limits: &[("cpu", "1")],
                restart_policy: Some("OnFailure"),
            },
            // Native sidecar: summed.
            ContainerDef {
                name: "proxy",
                requests: &[("memory", "256Mi")],
                limits: &[("memory", "256Mi"), ("cpu", "250m")],
                restart_policy: Some("Always"),
            },
            // Classic, never larger; a negative value never raises.
            ContainerDef {
                name: "tiny",
                requests: &[("cpu", "100m"), ("ephemeral-storage", "-1")],
                limits: &[],
                restart_policy: None,
            },
        ];
        let pod = encode_pod_spec(&containers, &init, None);
        let built = build(&ctx(), &submit_with(Some(pod), vec![]));
        assert!(built.problems.is_empty(), "{:?}", built.problems);
        assert_eq!(
            requests(&built),
            map(&[
                ("cpu", "2.500"),
                ("memory", "1280Mi"),
                ("nvidia.com/gpu", "1")
            ])
        );
        assert_eq!(
            limits(&built),
            map(&[("cpu", "2750m"), ("memory", "1280Mi")])
        );
        // The row counts the containers' requests only.
        assert_eq!(built.facts.cpu_millis, 1500);
        assert_eq!(built.facts.memory, 1_073_741_824);
        assert_eq!(built.facts.gpu, 0);
        assert_eq!(built.facts.ephemeral_storage, 0);
    }

    #[test]
    fn a_sidecar_after_a_classic_init_container_adds_to_the_maximum() {
        let containers = [ContainerDef {
            name: "main",
            requests: &[("cpu", "1")],
            ..Default::default()
        }];
        let init = [
            ContainerDef {
                name: "setup",
                requests: &[("cpu", "3")],
                ..Default::default()
            },
            ContainerDef {
                name: "proxy",
                requests: &[("cpu", "500m")],
                restart_policy: Some("Always"),
                ..Default::default()
            },
        ];
        let built = build(
            &ctx(),
            &submit_with(Some(encode_pod_spec(&containers, &init, None)), vec![]),
        );
        assert_eq!(requests(&built), map(&[("cpu", "3500m")]));
    }

    #[test]
    fn several_pod_specs_go_into_pod_specs() {
        let main = pod_spec_bytes(
            &[("main", &[("cpu", "1"), ("memory", "1Gi")])],
            Some("high"),
        );
        let extra = pod_spec_bytes(&[("extra", &[("cpu", "8")])], Some("low"));
        let objects = vec![object(
            None,
            kubernetes_object::Object::PodSpec(pod_object(Some(extra.clone()))),
        )];
        let built = build(&ctx(), &submit_with(Some(main.clone()), objects));
        assert!(built.problems.is_empty(), "{:?}", built.problems);
        assert_eq!(built.api_job.pod_spec, None);
        assert_eq!(built.api_job.pod_specs, vec![main, extra]);
        // Facts and requirements come from the main pod spec only.
        assert_eq!(built.facts.cpu_millis, 1000);
        assert_eq!(built.facts.priority_class.as_deref(), Some("high"));
        assert_eq!(requests(&built), map(&[("cpu", "1"), ("memory", "1Gi")]));
        assert_eq!(decoded(&built), built.api_job);
    }

    #[test]
    fn ingress_and_service_objects_become_kubernetes_objects() {
        let ingress_spec = vec![0x0a, 0x03, b'n', b'g', b'x'];
        let service_spec = vec![0x1a, 0x04, b'N', b'o', b'd', b'e'];
        let labelled = ev::ObjectMeta {
            labels: entries(&[("app", "web")]),
            annotations: entries(&[("note", "n")]),
            executor_id: b"ignored".to_vec(),
            ..meta("ns2", "web-ingress", "uid-1")
        };
        let objects = vec![
            object(
                Some(labelled),
                kubernetes_object::Object::Ingress(ingress_spec.clone()),
            ),
            object(
                None,
                kubernetes_object::Object::Service(service_spec.clone()),
            ),
        ];
        let built = build(
            &ctx(),
            &submit_with(Some(pod_spec_bytes(&[], None)), objects),
        );
        assert!(built.problems.is_empty(), "{:?}", built.problems);
        let ingress = &built.api_job.k8s_ingress;
        assert_eq!(ingress.len(), 1);
        let m = ingress[0].metadata.as_ref().map(|m| {
            (
                m.namespace.as_deref(),
                m.name.as_deref(),
                m.uid.as_deref(),
                m.labels.clone(),
                m.annotations.clone(),
            )
        });
        assert_eq!(
            m,
            Some((
                Some("ns2"),
                Some("web-ingress"),
                Some("uid-1"),
                map(&[("app", "web")]),
                map(&[("note", "n")])
            ))
        );
        assert_eq!(ingress[0].spec.as_deref(), Some(ingress_spec.as_slice()));
        let service = &built.api_job.k8s_service;
        assert_eq!(service.len(), 1);
        assert_eq!(service[0].spec.as_deref(), Some(service_spec.as_slice()));
        let empty = service[0]
            .metadata
            .as_ref()
            .map(|m| (m.name.as_deref(), m.namespace.as_deref()));
        assert_eq!(empty, Some((Some(""), Some(""))));
        // One pod spec (the main one, empty) goes into pod_spec.
        assert_eq!(built.api_job.pod_spec, Some(Vec::new()));
        assert_eq!(decoded(&built), built.api_job);
    }

    /// The metadata and status bytes are those Kubernetes' Go code writes.
    #[test]
    fn ingress_bytes_match_kubernetes_encoding() {
        let objects = vec![object(
            Some(meta("n", "x", "u")),
            kubernetes_object::Object::Ingress(Vec::new()),
        )];
        let built = build(&ctx(), &submit_with(None, objects));
        let ingress = built.api_job.k8s_ingress[0].encode_to_vec();
        let want: Vec<u8> = [
            &[0x0a, 19][..],     // metadata, 19 bytes:
            &[0x0a, 1, b'x'],    //   name
            &[0x12, 0],          //   generateName
            &[0x1a, 1, b'n'],    //   namespace
            &[0x22, 0],          //   selfLink
            &[0x2a, 1, b'u'],    //   uid
            &[0x32, 0],          //   resourceVersion
            &[0x38, 0],          //   generation
            &[0x42, 0],          //   creationTimestamp (zero time)
            &[0x12, 0],          // spec
            &[0x1a, 2, 0x0a, 0], // status: loadBalancer {}
        ]
        .concat();
        assert_eq!(ingress, want);
    }

    #[test]
    fn config_maps_and_unknown_objects_are_left_out() {
        let objects = vec![
            object(None, kubernetes_object::Object::ConfigMap(vec![1, 2, 3])),
            ev::KubernetesObject {
                object_meta: None,
                object: None,
            },
            object(None, kubernetes_object::Object::PodSpec(pod_object(None))),
            object(None, kubernetes_object::Object::Service(Vec::new())),
        ];
        let pod = pod_spec_bytes(&[("main", &[("cpu", "1")])], None);
        let built = build(&ctx(), &submit_with(Some(pod.clone()), objects));
        assert_eq!(built.problems.len(), 3, "{:?}", built.problems);
        assert!(built.problems[0].contains("extra object 0 is a ConfigMap"));
        assert!(built.problems[1].contains("extra object 1"));
        assert!(built.problems[2].contains("extra object 2"));
        assert_eq!(built.api_job.pod_spec, Some(pod));
        assert_eq!(built.api_job.k8s_service.len(), 1);
        assert_eq!(built.facts.cpu_millis, 1000);
    }

    #[test]
    fn a_missing_main_object_still_builds_a_job() {
        let mut submit = submit_with(None, vec![]);
        submit.main_object = None;
        let built = build(&ctx(), &submit);
        assert_eq!(built.problems.len(), 1);
        assert!(built.problems[0].contains("no main object"));
        assert_eq!(built.facts, MainPodFacts::default());
        assert_eq!(built.api_job.pod_spec, None);
        assert!(built.api_job.pod_specs.is_empty());
        assert_eq!(built.api_job.id, "01hjob");
        assert_eq!(built.namespace, "ns");
        assert_eq!(decoded(&built), built.api_job);

        // Main object without pod spec bytes, or of an unknown kind.
        let built = build(&ctx(), &submit_with(None, vec![]));
        assert_eq!(built.problems.len(), 1);
        assert!(built.problems[0].contains("no pod spec"));
        assert_eq!(built.api_job.pod_spec, None);
        let mut submit = submit_with(None, vec![]);
        submit.main_object = Some(ev::KubernetesMainObject::default());
        let built = build(&ctx(), &submit);
        assert!(built.problems[0].contains("unknown or missing kind"));

        // An extra pod spec is still carried.
        let extra = pod_spec_bytes(&[("x", &[("cpu", "4")])], None);
        let mut submit = submit_with(
            None,
            vec![object(
                None,
                kubernetes_object::Object::PodSpec(pod_object(Some(extra.clone()))),
            )],
        );
        submit.main_object = None;
        let built = build(&ctx(), &submit);
        assert_eq!(built.api_job.pod_spec, Some(extra));
        assert_eq!(built.facts.cpu_millis, 0);
    }

    #[test]
    fn missing_object_metadata_is_reported() {
        let mut submit = submit_with(Some(Vec::new()), vec![]);
        submit.object_meta = None;
        let built = build(&ctx(), &submit);
        assert_eq!(built.problems.len(), 1);
        assert!(built.problems[0].contains("no object metadata"));
        assert_eq!(built.namespace, "");
        assert!(built.api_job.labels.is_empty() && built.api_job.annotations.is_empty());
    }

    #[test]
    fn an_undecodable_pod_spec_is_carried_with_zero_resources() {
        let garbage = vec![0x12, 0x05, 0x01];
        let built = build(&ctx(), &submit_with(Some(garbage.clone()), vec![]));
        assert_eq!(built.problems.len(), 1);
        assert!(
            built.problems[0].contains("cannot be decoded"),
            "{:?}",
            built.problems
        );
        assert_eq!(built.facts, MainPodFacts::default());
        assert_eq!(built.api_job.pod_spec, Some(garbage));
        assert_eq!(
            built.api_job.scheduling_resource_requirements,
            Some(k8s::ResourceRequirements::default())
        );
        assert_eq!(decoded(&built), built.api_job);
    }

    #[test]
    fn malformed_quantities_leave_out_that_resource() {
        let containers = [
            ContainerDef {
                name: "main",
                requests: &[("cpu", "1"), ("cpu", "lots"), ("memory", "1Gi")],
                limits: &[("memory", "")],
                restart_policy: None,
            },
            ContainerDef {
                name: "side",
                requests: &[("cpu", "250m"), ("memory", "1.5.5")],
                ..Default::default()
            },
        ];
        let built = build(
            &ctx(),
            &submit_with(Some(encode_pod_spec(&containers, &[], None)), vec![]),
        );
        assert_eq!(built.problems.len(), 3, "{:?}", built.problems);
        assert_eq!(
            built.problems[0],
            r#"container 0 ("main"): request "cpu" = "lots" is not a valid quantity (a quantity is a signed decimal number followed by an optional suffix); left out"#
        );
        assert!(
            built.problems[1].contains(r#"limit "memory" = """#),
            "{}",
            built.problems[1]
        );
        assert!(built.problems[2].contains(r#"container 1 ("side"): request "memory" = "1.5.5""#));
        assert_eq!(built.facts.cpu_millis, 250);
        assert_eq!(built.facts.memory, 1_073_741_824);
        assert_eq!(requests(&built), map(&[("cpu", "250m"), ("memory", "1Gi")]));
        assert!(limits(&built).is_empty());
    }

    #[test]
    fn long_bad_values_are_shortened_in_problems() {
        let long = "x".repeat(10_000);
        let pod = pod_spec_bytes(&[("", &[("cpu", long.as_str())])], None);
        let built = build(&ctx(), &submit_with(Some(pod), vec![]));
        assert_eq!(built.problems.len(), 1);
        assert!(built.problems[0].starts_with("container 0: request"));
        assert!(built.problems[0].len() < 300, "{}", built.problems[0]);
        assert!(built.problems[0].contains("(10000 bytes)"));
    }

    #[test]
    fn negative_quantities_count_with_their_sign() {
        let pod = pod_spec_bytes(
            &[
                ("a", &[("cpu", "2"), ("memory", "1Gi")]),
                ("b", &[("cpu", "-500m"), ("memory", "-1Gi")]),
            ],
            None,
        );
        let built = build(&ctx(), &submit_with(Some(pod), vec![]));
        assert!(built.problems.is_empty(), "{:?}", built.problems);
        assert_eq!(built.facts.cpu_millis, 1500);
        assert_eq!(built.facts.memory, 0);
        assert_eq!(requests(&built), map(&[("cpu", "1500m"), ("memory", "0")]));
    }

    #[test]
    fn huge_values_saturate() {
        let pod = pod_spec_bytes(
            &[
                (
                    "a",
                    &[("cpu", "1E"), ("memory", "8Ei"), ("nvidia.com/gpu", "9e18")],
                ),
                (
                    "b",
                    &[
                        ("cpu", "1E"),
                        ("memory", "8Ei"),
                        ("nvidia.com/gpu", "9e18"),
                        ("ephemeral-storage", "-1e30"),
                    ],
                ),
                ("c", &[("ephemeral-storage", "-1e30")]),
            ],
            None,
        );
        let built = build(&ctx(), &submit_with(Some(pod), vec![]));
        assert!(built.problems.is_empty(), "{:?}", built.problems);
        assert_eq!(built.facts.cpu_millis, i64::MAX);
        assert_eq!(built.facts.memory, i64::MAX);
        assert_eq!(built.facts.gpu, i64::MAX);
        assert_eq!(built.facts.ephemeral_storage, i64::MIN);
        assert_eq!(requests(&built)["cpu"], "2E");
        assert_eq!(requests(&built)["nvidia.com/gpu"], "18e18");
        assert_eq!(requests(&built)["memory"], "18446744073709551614");
    }

    #[test]
    fn text_is_decoded_leniently() {
        // Invalid UTF-8 in a container name, a resource name, the priority
        // class and a label still decodes.
        let spec = k8s::PodSpec {
            containers: vec![k8s::Container {
                name: Some(vec![b'a', 0xff]),
                resources: Some(k8s::ContainerResources {
                    requests: vec![
                        k8s::ResourceEntry {
                            key: Some(b"cpu".to_vec()),
                            value: Some(k8s::RawQuantity {
                                string: Some(b"2".to_vec()),
                            }),
                        },
                        k8s::ResourceEntry {
                            key: Some(vec![0xfe]),
                            value: Some(k8s::RawQuantity {
                                string: Some(vec![b'1', 0xff]),
                            }),
                        },
                        // No value: zero.
                        k8s::ResourceEntry {
                            key: Some(b"memory".to_vec()),
                            value: None,
                        },
                    ],
                    limits: Vec::new(),
                }),
                restart_policy: None,
            }],
            init_containers: Vec::new(),
            priority_class_name: Some(vec![b'p', 0xc0]),
        };
        let mut submit = submit_with(Some(spec.encode_to_vec()), vec![]);
        if let Some(m) = submit.object_meta.as_mut() {
            m.labels = vec![ev::StringEntry {
                key: vec![0xff],
                value: b"v".to_vec(),
            }];
        }
        let built = build(&ctx(), &submit);
        assert_eq!(built.problems.len(), 1, "{:?}", built.problems);
        assert!(
            built.problems[0].contains("not UTF-8"),
            "{}",
            built.problems[0]
        );
        assert_eq!(built.facts.cpu_millis, 2000);
        assert_eq!(built.facts.priority_class.as_deref(), Some("p\u{fffd}"));
        assert_eq!(built.api_job.labels, map(&[("\u{fffd}", "v")]));
        assert_eq!(requests(&built), map(&[("cpu", "2"), ("memory", "0")]));
    }

    /// Our PodSpec reads Kubernetes' field numbers: bytes written by hand
    /// from core/v1's generated.proto (PodSpec.containers = 2,
    /// initContainers = 20, priorityClassName = 24; Container.name = 1,
    /// resources = 8, restartPolicy = 24; ResourceRequirements.limits = 1,
    /// requests = 2; Quantity.string = 1), with fields we skip in between.
    #[test]
    fn reads_kubernetes_field_numbers() {
        let quantity = [0x0a, 0x04, b'1', b'5', b'0', b'0'].to_vec(); // "1500"
        let entry = [
            &[0x0a, 0x03][..],
            b"cpu",
            &[0x12, quantity.len() as u8],
            &quantity,
        ]
        .concat();
        let resources = [&[0x12, entry.len() as u8][..], &entry].concat(); // requests
        let container = [
            &[0x0a, 0x01, b'c'][..],         // name
            &[0x12, 0x03, b'i', b'm', b'g'], // image (skipped)
            &[0x42, resources.len() as u8],  // resources
            &resources,
            &[0xc2, 0x01, 0x06], // restartPolicy (24)
            b"Always",
        ]
        .concat();
        let pod = [
            &[0x12, container.len() as u8][..], // containers
            &container,
            &[0x18, 0x01],                        // field 3 varint (skipped)
            &[0xa2, 0x01, container.len() as u8], // initContainers (20)
            &container,
            &[0xc2, 0x01, 0x02, b'p', b'c'], // priorityClassName (24)
        ]
        .concat();
        let spec = match k8s::PodSpec::decode(pod.as_slice()) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(spec.priority_class_name.as_deref(), Some(&b"pc"[..]));
        assert_eq!(spec.containers.len(), 1);
        assert_eq!(spec.init_containers.len(), 1);
        let c = &spec.containers[0];
        assert_eq!(c.name.as_deref(), Some(&b"c"[..]));
        assert_eq!(c.restart_policy.as_deref(), Some(&b"Always"[..]));
        let built = build(&ctx(), &submit_with(Some(pod), vec![]));
        assert_eq!(built.facts.cpu_millis, 1_500_000);
        // The sidecar init container doubles the requirement.
        assert_eq!(requests(&built), map(&[("cpu", "3k")]));
    }

    /// Top-level field numbers of the encoded api.Job are upstream's.
    #[test]
    fn encodes_upstream_job_field_numbers() {
        let objects = vec![
            object(
                None,
                kubernetes_object::Object::PodSpec(pod_object(Some(Vec::new()))),
            ),
            object(None, kubernetes_object::Object::Ingress(Vec::new())),
            object(None, kubernetes_object::Object::Service(Vec::new())),
        ];
        let built = build(
            &ctx(),
            &submit_with(
                Some(pod_spec_bytes(&[("m", &[("cpu", "1")])], None)),
                objects,
            ),
        );
        let mut fields = Vec::new();
        let mut buf = built.encoded.as_slice();
        while !buf.is_empty() {
            let key = match prost::encoding::decode_varint(&mut buf) {
                Ok(k) => k,
                Err(e) => panic!("{e}"),
            };
            let (tag, wire) = (key >> 3, key & 7);
            fields.push(tag);
            match wire {
                0 => {
                    let _ = prost::encoding::decode_varint(&mut buf);
                }
                1 => buf = &buf[8..],
                2 => {
                    let len = prost::encoding::decode_varint(&mut buf).map_or(0, |l| l as usize);
                    buf = &buf[len..];
                }
                other => panic!("unexpected wire type {other}"),
            }
        }
        fields.dedup();
        // id 1, job_set_id 2, queue 3, priority 4, created 6, namespace 7,
        // owner 8, labels 9, annotations 10, pod_specs 12, client_id 13,
        // k8s_ingress 17, k8s_service 18, scheduling_resource_requirements 21.
        assert_eq!(fields, vec![1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 17, 18, 21]);
        // Priority is a double (wire type 1).
        let single = build(&ctx(), &submit_with(Some(Vec::new()), vec![]));
        assert!(single
            .encoded
            .windows(9)
            .any(|w| w[0] == 0x21 && w[1..] == 7.0f64.to_le_bytes()));
        // One pod spec: field 5.
        assert!(single.encoded.windows(2).any(|w| w == [0x2a, 0x00]));
    }

    #[test]
    fn encoding_is_deterministic() {
        let pod = pod_spec_bytes(
            &[(
                "a",
                &[("memory", "1Gi"), ("cpu", "1"), ("zzz", "1"), ("aaa", "2")],
            )],
            None,
        );
        let a = build(&ctx(), &submit_with(Some(pod.clone()), vec![]));
        let b = build(&ctx(), &submit_with(Some(pod), vec![]));
        assert_eq!(a.encoded, b.encoded);
        assert_eq!(a.encoded, a.api_job.encode_to_vec());
    }

    #[test]
    fn pod_spec_bytes_round_trips() {
        let bytes = pod_spec_bytes(
            &[("main", &[("cpu", "1"), ("memory", "2Gi")]), ("b", &[])],
            Some("pc"),
        );
        let spec = match k8s::PodSpec::decode(bytes.as_slice()) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(spec.containers.len(), 2);
        assert_eq!(spec.containers[0].name.as_deref(), Some(&b"main"[..]));
        assert_eq!(spec.priority_class_name.as_deref(), Some(&b"pc"[..]));
        let none = pod_spec_bytes(&[], None);
        assert!(none.is_empty());
    }
}
