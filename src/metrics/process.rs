//! The `process_*` metrics upstream's Go client exports on Linux that the
//! `prometheus` crate's process collector (registered beside this) lacks:
//! the address-space limit and the process's network traffic. Read from
//! `/proc` at each scrape; a value that cannot be read is left out.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, Metric, MetricFamily, MetricType};

pub(super) struct Extra {
    descs: Vec<Desc>,
}

const MAX_VSIZE: (&str, &str) = (
    "process_virtual_memory_max_bytes",
    "Maximum amount of virtual memory available in bytes.",
);
const RECEIVED: (&str, &str) = (
    "process_network_receive_bytes_total",
    "Number of bytes received by the process over the network.",
);
const SENT: (&str, &str) = (
    "process_network_transmit_bytes_total",
    "Number of bytes sent by the process over the network.",
);

impl Extra {
    pub(super) fn new() -> Extra {
        let descs = [MAX_VSIZE, RECEIVED, SENT]
            .iter()
            .filter_map(|(n, h)| {
                Desc::new(n.to_string(), h.to_string(), vec![], Default::default()).ok()
            })
            .collect();
        Extra { descs }
    }
}

fn family(name: &str, help: &str, value: f64, counter: bool) -> MetricFamily {
    let mut m = Metric::default();
    let mut f = MetricFamily::default();
    if counter {
        let mut c = Counter::default();
        c.set_value(value);
        m.set_counter(c);
        f.set_field_type(MetricType::COUNTER);
    } else {
        let mut g = Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
        f.set_field_type(MetricType::GAUGE);
    }
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_metric(vec![m]);
    f
}

/// The soft limit of `Max address space` in `/proc/self/limits` text;
/// unlimited is 2^64-1, as Go's procfs reads it.
pub(super) fn address_space_limit(limits: &str) -> Option<f64> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    let soft = line["Max address space".len()..]
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        return Some(u64::MAX as f64);
    }
    soft.parse::<u64>().ok().map(|v| v as f64)
}

/// `IpExt` `InOctets` and `OutOctets` from `/proc/self/net/netstat` text
/// (a header line of names, then a line of values).
pub(super) fn octets(netstat: &str) -> Option<(f64, f64)> {
    let mut lines = netstat.lines().filter(|l| l.starts_with("IpExt:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let get = |name: &str| -> Option<f64> {
        let i = names.iter().position(|n| *n == name)?;
        values.get(i)?.parse::<f64>().ok()
    };
    Some((get("InOctets")?, get("OutOctets")?))
}

impl Collector for Extra {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        if let Some(v) = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|t| address_space_limit(&t))
        {
            out.push(family(MAX_VSIZE.0, MAX_VSIZE.1, v, false));
        }
        if let Some((rx, tx)) = std::fs::read_to_string("/proc/self/net/netstat")
            .ok()
            .and_then(|t| octets(&t))
        {
            out.push(family(RECEIVED.0, RECEIVED.1, rx, true));
            out.push(family(SENT.0, SENT.1, tx, true));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_limits_and_netstat() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 4096                 files\n\
                      Max address space         unlimited            unlimited            bytes\n";
        assert_eq!(address_space_limit(limits), Some(u64::MAX as f64));
        let limited = limits.replace("unlimited            unlimited", "1000 2000");
        assert_eq!(address_space_limit(&limited), Some(1000.0));
        let netstat =
            "TcpExt: A B\nTcpExt: 1 2\nIpExt: InNoRoutes InOctets OutOctets\nIpExt: 0 123 456\n";
        assert_eq!(octets(netstat), Some((123.0, 456.0)));
        assert_eq!(octets("nothing"), None);
    }
}
