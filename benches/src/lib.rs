//! Workloads shared by the benches: N ClusterIP services (optionally with
//! node ports), 10 endpoints each, as plain values.
//!
//! Sizes come from `PROXIER_BENCH_SIZES` (comma-separated, default
//! `100,1000,10000`); CI runs `100` as a smoke test.

pub mod wire;

use proxier_core::{
    ChangeTracker, EndpointSlice, IpFamily, PortSpec, Protocol, Service, ServiceType,
    SliceEndpoint, SlicePort, SyncRequest,
};

/// Bench sizes (services).
pub fn sizes() -> Vec<usize> {
    sizes_or(&[100, 1000, 10000])
}

/// Bench sizes, with another default.
pub fn sizes_or(default: &[usize]) -> Vec<usize> {
    std::env::var("PROXIER_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

/// Today, `YYYY-MM-DD` (for reports).
pub fn today() -> String {
    std::process::Command::new("date")
        .arg("+%F")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The machine, in one line (cores, CPU model, kernel), for reports.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = cpu.lines().filter(|l| l.starts_with("processor")).count();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {model}, kernel {}", kernel.trim())
}

/// Service `i`: `ns/svc-i`, cluster IP `10.96.x.y`, port 80/TCP, node port
/// `30000 + i % 2768` when `node_ports`.
pub fn service(i: usize, node_ports: bool) -> Service {
    let ip = [10, 96 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
    let ip = if ip[3] == 0 {
        [ip[0], ip[1] + 100, ip[2], 1]
    } else {
        ip
    };
    Service {
        namespace: "bench".into(),
        name: format!("svc-{i}"),
        service_type: if node_ports {
            ServiceType::NodePort
        } else {
            ServiceType::ClusterIp
        },
        cluster_ips: vec![ip.into()],
        ports: vec![PortSpec {
            name: "http".into(),
            protocol: Some(Protocol::Tcp),
            port: 80,
            node_port: if node_ports {
                30000 + (i % 2768) as u16
            } else {
                0
            },
        }],
        ..Default::default()
    }
}

/// The EndpointSlice of service `i`: `eps` endpoints from `10.128.0.0/9`,
/// target port 8080; `generation` shifts the last endpoint's address.
pub fn slice(i: usize, eps: usize, generation: u32) -> EndpointSlice {
    let endpoints = (0..eps)
        .map(|k| {
            let n = (i * eps + k) as u32 + if k + 1 == eps { generation * 7919 } else { 0 };
            let ip = [10, 128 | ((n >> 16) & 0x7f) as u8, (n >> 8) as u8, n as u8];
            SliceEndpoint {
                addresses: vec![ip.into()],
                ready: Some(true),
                node_name: Some(if k % 3 == 0 {
                    "node-1".into()
                } else {
                    "node-2".into()
                }),
                ..Default::default()
            }
        })
        .collect();
    EndpointSlice {
        namespace: "bench".into(),
        name: format!("svc-{i}-abcde"),
        service_name: format!("svc-{i}"),
        address_type: IpFamily::V4,
        ports: vec![SlicePort {
            name: "http".into(),
            port: Some(8080),
            protocol: Some(Protocol::Tcp),
        }],
        endpoints,
        trigger_time: None,
    }
}

/// The partial sync that follows `t` taking one more change.
fn partial(t: &mut ChangeTracker) -> SyncRequest {
    let (snapshot, changes) = t.apply();
    SyncRequest {
        snapshot,
        changes,
        full: false,
        verify: false,
    }
}

/// Moves service `i`'s last endpoint to `generation` and applies: the
/// "one endpoint changed" step of every bench.
pub fn endpoint_moved(t: &mut ChangeTracker, i: usize, eps: usize, generation: u32) -> SyncRequest {
    t.update_endpoint_slice(&slice(i, eps, generation))
        .expect("valid slice");
    partial(t)
}

/// Adds service `i` with its slice and applies: the "one service added"
/// step of every bench.
pub fn service_added(t: &mut ChangeTracker, i: usize, eps: usize) -> SyncRequest {
    t.update_service(&service(i, false)).expect("valid service");
    t.update_endpoint_slice(&slice(i, eps, 0))
        .expect("valid slice");
    partial(t)
}

/// A tracker on `node-1` fed `n` services with `eps` endpoints each, all
/// applied: the state every bench starts from.
pub fn filled(n: usize, eps: usize) -> ChangeTracker {
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    for i in 0..n {
        t.update_service(&service(i, false)).expect("valid service");
        t.update_endpoint_slice(&slice(i, eps, 0))
            .expect("valid slice");
    }
    t.apply();
    t
}

/// Service `i` made dual-stack: its IPv4 cluster IP and `fd00:96::…`.
pub fn dual_service(i: usize) -> Service {
    let mut s = service(i, false);
    let v6 = std::net::Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, (i >> 16) as u16, i as u16 + 1);
    s.cluster_ips.push(v6.into());
    s
}

/// The IPv6 twin of [`slice`]: `eps` endpoints in `fd00:128::/64`.
pub fn slice_v6(i: usize, eps: usize) -> EndpointSlice {
    let mut s = slice(i, eps, 0);
    s.name = format!("svc-{i}-v6abc");
    s.address_type = IpFamily::V6;
    for (k, e) in s.endpoints.iter_mut().enumerate() {
        let n = (i * eps + k) as u32;
        e.addresses = vec![
            std::net::Ipv6Addr::new(0xfd00, 0x128, 0, 0, 0, 0, (n >> 16) as u16, n as u16 + 1)
                .into(),
        ];
    }
    s
}

/// Two trackers (IPv4, IPv6) fed the same `n` dual-stack services with
/// `eps` endpoints per family each, all applied: a dual-stack node.
pub fn filled_dual(n: usize, eps: usize) -> [ChangeTracker; 2] {
    [IpFamily::V4, IpFamily::V6].map(|f| {
        let mut t = ChangeTracker::new(f, "node-1");
        for i in 0..n {
            t.update_service(&dual_service(i)).expect("valid service");
            t.update_endpoint_slice(&slice(i, eps, 0))
                .expect("valid slice");
            t.update_endpoint_slice(&slice_v6(i, eps))
                .expect("valid slice");
        }
        t.apply();
        t
    })
}
