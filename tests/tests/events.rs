//! Event encodings: OCSF flow records validate against the published OCSF schema,
//! enrichment names the process, user and cgroup, ECS records carry the fields
//! SIEM rules key on.

use warden_tests::{Lab, validate_ecs, validate_ocsf};

const PORT: u16 = 11434;

fn scenario(format: &str) -> (Lab, Vec<serde_json::Value>, u32) {
    let mut lab = Lab::new();
    let srv = lab.netns("srv");
    let bad = lab.netns("bad");
    lab.veth(&srv, &["10.88.2.1/24"], &bad, &["10.88.2.2/24"]);
    let policy = format!(
        "version = 1\n[service]\nports = [{PORT}]\nserver_cgroups = [\"{}\"]\n[local]\nallow_cgroups = [\"{}\"]\n",
        lab.cgroup("ollama.service"),
        lab.cgroup("proxy.service"),
    );
    let d = lab.daemon_with(
        Some(&srv),
        &lab.policy("p.toml", &policy),
        &["--event-format", format],
    );
    let mut server = lab.prober(Some(&srv), Some("ollama.service"));
    assert_eq!(server.ask(&format!("listen 0.0.0.0 {PORT}")), "ok");
    let mut rogue = lab.prober(Some(&srv), Some("rogue.scope"));
    let rogue_pid = rogue.pid();
    assert_eq!(rogue.connect("127.0.0.1", PORT), "denied");
    assert_eq!(
        lab.prober(Some(&srv), Some("proxy.service"))
            .connect("127.0.0.1", PORT),
        "connected"
    );
    assert_eq!(
        lab.prober(Some(&bad), None).connect("10.88.2.1", PORT),
        "timeout"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Stopping the daemon adds the `stop` event.
    let path = d.events.clone();
    drop(d);
    let events = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    (lab, events, rogue_pid)
}

#[test]
fn ocsf_flow_records_validate_and_name_the_process() {
    let (lab, events, rogue_pid) = scenario("ocsf");
    // Every line is OCSF: flows and warden's own lifecycle alike.
    let verdicts = validate_ocsf(&events);
    assert_eq!(verdicts.len(), events.len());
    assert!(
        verdicts.iter().all(|v| v.starts_with("ok ")),
        "{verdicts:#?}\n{events:#?}"
    );
    let lifecycle: Vec<_> = events.iter().filter(|e| e["class_uid"] == 6002).collect();
    let kinds: Vec<_> = lifecycle
        .iter()
        .map(|e| e["unmapped"]["warden"]["event"].as_str().unwrap())
        .collect();
    assert!(
        kinds.starts_with(&["start", "policy_applied"]) && kinds.ends_with(&["stop"]),
        "{kinds:?}"
    );
    assert_eq!(lifecycle[0]["activity_id"], 3, "Start");
    let flows: Vec<_> = events
        .into_iter()
        .filter(|e| e["class_uid"] == 4001)
        .collect();
    assert!(flows.len() >= 4, "bind, deny, allow, xdp deny: {flows:#?}");
    let verdicts = validate_ocsf(&flows);
    assert_eq!(verdicts.len(), flows.len());
    assert!(
        verdicts.iter().all(|v| v == "ok 4001"),
        "{verdicts:#?}\n{flows:#?}"
    );

    let deny = flows
        .iter()
        .find(|e| e["actor"]["process"]["pid"] == rogue_pid)
        .expect("the rogue's denied connect");
    assert_eq!(deny["activity_id"], 5, "Refuse");
    assert_eq!(deny["disposition_id"], 2, "Blocked");
    assert_eq!(deny["dst_endpoint"]["port"], PORT);
    let p = &deny["actor"]["process"];
    assert_eq!(p["name"], "python3");
    assert!(
        p["file"]["path"].as_str().unwrap().contains("python"),
        "{p}"
    );
    assert!(p["cmd_line"].as_str().unwrap().contains("probe.py"), "{p}");
    assert_eq!(p["user"]["name"], "root");
    let w = &deny["unmapped"]["warden"];
    assert_eq!(w["cgroup"], lab.cgroup_rel("rogue.scope"));
    assert_eq!(w["systemd_unit"], "rogue.scope");
    assert_eq!(w["reason"], "local_not_allowed");
    assert!(
        deny["connection_info"]["uid"].as_str().is_some(),
        "socket cookie as connection uid"
    );

    let xdp = flows
        .iter()
        .find(|e| e["unmapped"]["warden"]["hook"] == "xdp")
        .expect("xdp deny");
    assert_eq!(xdp["src_endpoint"]["ip"], "10.88.2.2");
    assert!(
        xdp["connection_info"]["community_uid"]
            .as_str()
            .unwrap()
            .starts_with("1:")
    );
    assert_eq!(xdp["connection_info"]["direction_id"], 1);
    let uids: std::collections::HashSet<_> =
        flows.iter().map(|e| e["metadata"]["uid"].clone()).collect();
    assert_eq!(uids.len(), flows.len(), "event uids are unique");
}

#[test]
fn ecs_events_validate_against_the_published_fields() {
    let (_lab, events, rogue_pid) = scenario("ecs");
    let verdicts = validate_ecs(&events);
    assert_eq!(verdicts.len(), events.len());
    let bad: Vec<_> = verdicts
        .iter()
        .zip(&events)
        .filter(|(v, _)| *v != "ok")
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    assert!(
        events.iter().all(|e| e["ecs"]["version"] == "8.11.0"),
        "every line is ECS"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"]["action"] == "policy_applied")
    );
    let flows: Vec<_> = events
        .into_iter()
        .filter(|e| e["event"]["dataset"] == "ollama_warden.flow")
        .collect();
    assert!(flows.len() >= 4);
    for e in &flows {
        assert_eq!(e["ecs"]["version"], "8.11.0");
        assert!(e["@timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(e["event"]["category"][0], "network");
        assert!(["success", "failure"].contains(&e["event"]["outcome"].as_str().unwrap()));
        assert!(e["destination"]["port"].is_u64() && e["network"]["transport"] == "tcp");
    }
    let deny = flows
        .iter()
        .find(|e| e["process"]["pid"] == rogue_pid)
        .unwrap();
    assert_eq!(deny["event"]["type"][1], "denied");
    assert_eq!(deny["user"]["name"], "root");
    assert!(
        deny["process"]["command_line"]
            .as_str()
            .unwrap()
            .contains("probe.py")
    );
}
