//! `status`: the fleet of `run` replicas, from their heartbeats
//! (`ingester_heartbeat`, see [`crate::heartbeat`]). Each replica is
//! alive, stopped (cleanly), failed (stopped with an error) or crashed (no
//! beat for `heartbeat.staleAfter` and no stop written), with its progress
//! and lag. The state is decided by a pure function of the row and the
//! database's clock, so replicas on hosts with skewed clocks compare fairly.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tokio_postgres::Client;

/// What became of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Beat within `heartbeat.staleAfter`.
    Alive,
    /// Stale without a final beat: killed, out of memory, host lost.
    Crashed,
    /// Wrote a final beat after `run` failed.
    Failed,
    /// Wrote a final beat after a clean stop (SIGTERM, SIGINT).
    StoppedCleanly,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Alive => "alive",
            State::Crashed => "crashed",
            State::Failed => "failed",
            State::StoppedCleanly => "stopped-cleanly",
        }
    }
}

/// The state of a replica whose last beat is `beat_age` old; pure.
pub fn classify(
    beat_age: Duration,
    stopped: bool,
    stop_error: Option<&str>,
    stale_after: Duration,
) -> State {
    match (stopped, stop_error) {
        (true, None) => State::StoppedCleanly,
        (true, Some(_)) => State::Failed,
        (false, _) if beat_age <= stale_after => State::Alive,
        (false, _) => State::Crashed,
    }
}

/// One replica as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replica {
    pub replica_id: String,
    pub state: State,
    /// No beat within `heartbeat.staleAfter` (whatever the state).
    pub stale: bool,
    pub host: String,
    pub pid: i32,
    pub version: String,
    pub topic: String,
    pub subscription: String,
    pub started: String,
    pub last_beat: String,
    pub last_beat_age_seconds: f64,
    pub stopped: Option<String>,
    pub stop_error: Option<String>,
    pub last_commit: Option<String>,
    pub batches: i64,
    pub messages: i64,
    pub events: i64,
    pub lag_seconds: Option<f64>,
    pub schema_generation: Option<i32>,
    pub ready: bool,
    pub healthy: bool,
}

/// The fleet: replicas by state, then id; and how many are in each state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fleet {
    pub stale_after_seconds: f64,
    pub counts: BTreeMap<&'static str, usize>,
    pub replicas: Vec<Replica>,
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

const QUERY: &str =
    "SELECT replica_id, host, pid, version, topic, subscription, started, last_beat, \
    stopped, stop_error, last_commit, batches, messages, events, lag_seconds, schema_generation, \
    ready, healthy, extract(epoch FROM now() - last_beat)::float8 \
    FROM ingester_heartbeat";

/// Reads the heartbeats.
pub async fn fleet(client: &Client, stale_after: Duration) -> anyhow::Result<Fleet> {
    let rows = client.query(QUERY, &[]).await.map_err(|e| {
        let text = crate::pg::error_chain(&e);
        if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
            anyhow::anyhow!("{text}: run `lookout-ingester migrate` to create it")
        } else {
            anyhow::anyhow!("cannot read ingester_heartbeat: {text}")
        }
    })?;
    let mut replicas = Vec::with_capacity(rows.len());
    for r in &rows {
        let age: f64 = r.try_get(18)?;
        let stopped: Option<DateTime<Utc>> = r.try_get(8)?;
        let stop_error: Option<String> = r.try_get(9)?;
        let beat_age = Duration::try_from_secs_f64(age.max(0.0)).unwrap_or(Duration::MAX);
        replicas.push(Replica {
            replica_id: r.try_get(0)?,
            state: classify(
                beat_age,
                stopped.is_some(),
                stop_error.as_deref(),
                stale_after,
            ),
            stale: beat_age > stale_after,
            host: r.try_get(1)?,
            pid: r.try_get(2)?,
            version: r.try_get(3)?,
            topic: r.try_get(4)?,
            subscription: r.try_get(5)?,
            started: time(r.try_get(6)?),
            last_beat: time(r.try_get(7)?),
            last_beat_age_seconds: (age * 10.0).round() / 10.0,
            stopped: stopped.map(time),
            stop_error,
            last_commit: r.try_get::<_, Option<DateTime<Utc>>>(10)?.map(time),
            batches: r.try_get(11)?,
            messages: r.try_get(12)?,
            events: r.try_get(13)?,
            lag_seconds: r.try_get(14)?,
            schema_generation: r.try_get(15)?,
            ready: r.try_get(16)?,
            healthy: r.try_get(17)?,
        });
    }
    Ok(summarise(replicas, stale_after))
}

/// Sorts the replicas (state, then id) and counts them by state; pure.
pub fn summarise(mut replicas: Vec<Replica>, stale_after: Duration) -> Fleet {
    replicas.sort_by(|a, b| (a.state, &a.replica_id).cmp(&(b.state, &b.replica_id)));
    let mut counts = BTreeMap::new();
    for s in [
        State::Alive,
        State::Crashed,
        State::Failed,
        State::StoppedCleanly,
    ] {
        counts.insert(s.as_str(), replicas.iter().filter(|r| r.state == s).count());
    }
    Fleet {
        stale_after_seconds: stale_after.as_secs_f64(),
        counts,
        replicas,
    }
}

/// The text view: a summary line, then one line per replica.
pub fn render(f: &Fleet) -> String {
    let mut out = String::new();
    if f.replicas.is_empty() {
        out.push_str("no replica has written a heartbeat\n");
        return out;
    }
    let counts: Vec<String> = f
        .counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    let _ = writeln!(
        out,
        "{} replica(s): {} (stale after {}s without a heartbeat)",
        f.replicas.len(),
        counts.join(", "),
        f.stale_after_seconds
    );
    for r in &f.replicas {
        let lag = r
            .lag_seconds
            .map_or("-".to_string(), |l| format!("{l:.1}s"));
        let _ = write!(
            out,
            "{} {}: host {} pid {} version {}, {} {}, started {}, last beat {} ({}s ago), \
             {} batches {} messages {} events, last commit {}, lag {}, generation {}",
            r.replica_id,
            r.state.as_str(),
            r.host,
            r.pid,
            r.version,
            r.topic,
            r.subscription,
            r.started,
            r.last_beat,
            r.last_beat_age_seconds,
            r.batches,
            r.messages,
            r.events,
            r.last_commit.as_deref().unwrap_or("never"),
            lag,
            r.schema_generation
                .map_or("-".to_string(), |g| format!("{g:03}")),
        );
        if let Some(s) = &r.stopped {
            let _ = write!(out, ", stopped {s}");
        }
        if let Some(e) = &r.stop_error {
            let _ = write!(out, ": {e}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALE: Duration = Duration::from_secs(60);

    #[test]
    fn states() {
        let s = |age: u64, stopped: bool, err: Option<&str>| {
            classify(Duration::from_secs(age), stopped, err, STALE)
        };
        assert_eq!(s(5, false, None), State::Alive);
        assert_eq!(s(60, false, None), State::Alive);
        assert_eq!(s(61, false, None), State::Crashed);
        assert_eq!(s(5, true, None), State::StoppedCleanly);
        assert_eq!(s(5000, true, None), State::StoppedCleanly);
        assert_eq!(s(5, true, Some("boom")), State::Failed);
    }

    fn replica(id: &str, state: State) -> Replica {
        Replica {
            replica_id: id.into(),
            state,
            stale: state != State::Alive,
            host: "h".into(),
            pid: 1,
            version: "0.1.0".into(),
            topic: "events".into(),
            subscription: "s".into(),
            started: "2026-01-01T00:00:00.000Z".into(),
            last_beat: "2026-01-01T00:01:00.000Z".into(),
            last_beat_age_seconds: 2.0,
            stopped: None,
            stop_error: None,
            last_commit: None,
            batches: 3,
            messages: 30,
            events: 90,
            lag_seconds: Some(0.0),
            schema_generation: Some(31),
            ready: true,
            healthy: true,
        }
    }

    #[test]
    fn sorted_by_state_then_id_and_counted() {
        let f = summarise(
            vec![
                replica("b", State::StoppedCleanly),
                replica("c", State::Alive),
                replica("a", State::Crashed),
                replica("a2", State::Alive),
            ],
            STALE,
        );
        let ids: Vec<&str> = f.replicas.iter().map(|r| r.replica_id.as_str()).collect();
        assert_eq!(ids, ["a2", "c", "a", "b"]);
        assert_eq!(f.counts["alive"], 2);
        assert_eq!(f.counts["crashed"], 1);
        assert_eq!(f.counts["failed"], 0);
        let text = render(&f);
        assert!(
            text.starts_with("4 replica(s): 2 alive, 1 crashed, 1 stopped-cleanly"),
            "{text}"
        );
        assert!(
            text.contains("a2 alive: host h pid 1 version 0.1.0, events s"),
            "{text}"
        );
        let json = serde_json::to_value(&f).expect("json");
        assert_eq!(json["replicas"][2]["state"], "crashed");
        assert_eq!(json["replicas"][3]["state"], "stopped-cleanly");
        assert_eq!(
            render(&summarise(vec![], STALE)),
            "no replica has written a heartbeat\n"
        );
    }
}
