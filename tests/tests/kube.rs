//! Pod metadata that never freezes: a stand-in Kubernetes API that expires the watch in the
//! middle of its stream (an `ERROR` event with code 410 inside an HTTP 200 response, after a
//! bookmark) and adds a pod after it. The sensor must re-list (with `resourceVersion=0`),
//! watch with bookmarks from the new list's version, and give events of the new pod's
//! container its pod name, namespace, container name, image and owning workload.

use std::{
    io::{Read, Write},
    net::TcpListener,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use sensor_tests::{require_root, EventExt, Sensor};

const NODE: &str = "gpu-node-9";
const POD_A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const POD_B: &str = "bbbbbbbb-0000-4000-8000-000000000002";
const CID_B: &str = "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf";

fn pod(
    uid: &str,
    name: &str,
    rv: &str,
    owner: Option<(&str, &str)>,
    hash: Option<&str>,
) -> serde_json::Value {
    let mut labels = serde_json::json!({"app": name});
    if let Some(h) = hash {
        labels["pod-template-hash"] = h.into();
    }
    let mut meta = serde_json::json!({"uid": uid, "name": name, "namespace": "training", "resourceVersion": rv, "labels": labels});
    if let Some((kind, n)) = owner {
        meta["ownerReferences"] = serde_json::json!([{"apiVersion": "apps/v1", "kind": kind, "name": n, "uid": "x", "controller": true}]);
    }
    serde_json::json!({
        "metadata": meta,
        "spec": {"nodeName": NODE, "containers": [{"name": "trainer", "image": "nvcr.io/nvidia/pytorch:24.05-py3"}]},
        "status": {"containerStatuses": [{"name": "trainer", "image": "nvcr.io/nvidia/pytorch:24.05-py3", "containerID": format!("containerd://{CID_B}")}]},
    })
}

/// The stand-in API; returns its port and the request lines it got.
fn api() -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(vec![]));
    let lg = log.clone();
    std::thread::spawn(move || {
        let mut lists = 0;
        let mut watches = 0;
        for c in l.incoming() {
            let Ok(mut c) = c else { break };
            let mut req = Vec::new();
            let mut buf = [0u8; 2048];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&req).to_string();
            let line = head.lines().next().unwrap_or("").to_string();
            lg.lock().unwrap().push(line.clone());
            if !line.contains(&format!("spec.nodeName%3D{NODE}")) {
                let _ = write!(
                    c,
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                continue;
            }
            if !line.contains("watch=1") {
                lists += 1;
                // The first list knows pod A; after the expiry pod B exists too.
                let (rv, items) = if lists == 1 {
                    (
                        "100",
                        vec![pod(
                            POD_A,
                            "notebook-0",
                            "90",
                            Some(("StatefulSet", "notebook")),
                            None,
                        )],
                    )
                } else {
                    (
                        "300",
                        vec![
                            pod(
                                POD_A,
                                "notebook-0",
                                "90",
                                Some(("StatefulSet", "notebook")),
                                None,
                            ),
                            pod(
                                POD_B,
                                "trainer-7d9f8c6b5-x2x9z",
                                "290",
                                Some(("ReplicaSet", "trainer-7d9f8c6b5")),
                                Some("7d9f8c6b5"),
                            ),
                        ],
                    )
                };
                let body = serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items}).to_string();
                let _ = write!(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                continue;
            }
            watches += 1;
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
            );
            if watches == 1 {
                // A bookmark, then the expiry inside the 200 stream, then the end.
                let _ = writeln!(
                    c,
                    "{}",
                    serde_json::json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "150"}}})
                );
                let _ = writeln!(
                    c,
                    "{}",
                    serde_json::json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "too old resource version: 150 (250)", "reason": "Expired", "code": 410}})
                );
                continue;
            }
            // Later watches stay open (quiet node) until the test ends.
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(60));
                drop(c);
            });
        }
    });
    (port, log)
}

#[test]
fn an_expired_watch_relists_and_new_pods_get_their_metadata() {
    if !require_root("an_expired_watch_relists_and_new_pods_get_their_metadata") {
        return;
    }
    let root = sensor_tests::cgroup2_root().expect("a cgroup v2 mount");
    let scope = root
        .join("kubepods.slice")
        .join(format!("kubepods-pod{}.slice", POD_B.replace('-', "_")))
        .join(format!("cri-containerd-{CID_B}.scope"));
    std::fs::create_dir_all(&scope).unwrap();
    let (port, log) = api();
    let d = std::env::temp_dir().join(format!("sensor-kube-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let cfg = d.join("sensor.toml");
    std::fs::write(
        &cfg,
        format!("[context]\nkube_api = \"http://127.0.0.1:{port}\"\nnode_name = \"{NODE}\"\n"),
    )
    .unwrap();
    let s = Sensor::start(&["--config", cfg.to_str().unwrap()]);
    // The expiry comes at once; the re-list and the next watch follow within a second or so.
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(10)
        && !log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("watch=1") && l.contains("resourceVersion=300"))
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let reqs = log.lock().unwrap().clone();
    // A process in pod B's container.
    let marker = format!("kube-marker-{}", std::process::id());
    let st = Command::new("sh")
        .args([
            "-c",
            &format!(
                "echo $$ > {}/cgroup.procs && exec /bin/true {marker}",
                scope.display()
            ),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let ev = s
        .wait_event(Duration::from_secs(10), |e| {
            e.exec().is_some_and(|x| x.argv.contains(&marker))
        })
        .expect("the exec in pod B");
    drop(s.stop());
    let _ = std::fs::remove_dir(&scope);
    let _ = std::fs::remove_dir(scope.parent().unwrap());
    let _ = std::fs::remove_dir_all(&d);

    let lists: Vec<&String> = reqs.iter().filter(|l| !l.contains("watch=1")).collect();
    let watches: Vec<&String> = reqs.iter().filter(|l| l.contains("watch=1")).collect();
    assert!(lists.len() >= 2, "re-listed after the expiry: {reqs:#?}");
    assert!(
        lists.iter().all(|l| l.contains("resourceVersion=0")),
        "lists from the watch cache: {reqs:#?}"
    );
    assert!(
        watches
            .iter()
            .all(|l| l.contains("allowWatchBookmarks=true")),
        "{reqs:#?}"
    );
    assert!(watches[0].contains("resourceVersion=100"), "{reqs:#?}");
    assert!(
        watches.iter().any(|l| l.contains("resourceVersion=300")),
        "watched again from the new list, not the expired version: {reqs:#?}"
    );
    assert!(
        !watches
            .iter()
            .skip(1)
            .any(|l| l.contains("resourceVersion=150") || l.contains("resourceVersion=100")),
        "never re-watched the expired version: {reqs:#?}"
    );
    let c = ev.container.expect("container identity");
    assert_eq!(c.pod_uid.as_deref(), Some(POD_B));
    assert_eq!(c.pod.as_deref(), Some("trainer-7d9f8c6b5-x2x9z"));
    assert_eq!(c.namespace.as_deref(), Some("training"));
    assert_eq!(c.name.as_deref(), Some("trainer"));
    assert_eq!(c.image.as_deref(), Some("nvcr.io/nvidia/pytorch:24.05-py3"));
    let w = c.workload.expect("owning workload");
    assert_eq!(
        (w.kind.as_str(), w.name.as_str()),
        ("Deployment", "trainer")
    );
}
