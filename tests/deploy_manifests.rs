//! The manifests under deploy/ as `kubectl kustomize` renders them: the single replica on sled,
//! the overlay for several replicas on etcd (deploy/ha) and the optional etcd (deploy/ha/etcd),
//! checked for what a rollout depends on: replicas and update strategy, the disruption budget
//! selecting the pods, the etcd flags pointing at mounted files, the probes, the APIService
//! reaching the pods through the Service.
use serde::Deserialize;
use serde_yaml::Value;
use std::path::Path;
use std::process::Command;

/// Every object `kubectl kustomize DIR` prints.
fn render(dir: &str) -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(root.join(dir))
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn all<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    match all(objs, kind).as_slice() {
        [o] => o,
        found => panic!("{} objects of kind {kind}", found.len()),
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map_or(&[], Vec::as_slice)
}

fn args(container: &Value) -> Vec<&str> {
    seq(&container["args"]).iter().map(s).collect()
}

/// The value of `--flag=value` in `args`.
fn flag<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(name)?.strip_prefix('='))
}

/// Whether every `matchLabels` pair is among `labels` (the selector picks those pods).
fn selects(selector: &Value, labels: &Value) -> bool {
    let wanted = selector["matchLabels"].as_mapping().expect("matchLabels");
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    seq(&pod["containers"])
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The volume behind `path` in `container`: where a file passed as a flag really comes from.
fn volume_for<'a>(pod: &'a Value, container: &Value, path: &str) -> (&'a Value, String) {
    let mount = seq(&container["volumeMounts"])
        .iter()
        .find(|m| path.starts_with(&format!("{}/", s(&m["mountPath"]))))
        .unwrap_or_else(|| panic!("{path} is not under any volumeMount"));
    let volume = seq(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {:?}", mount["name"]));
    let rel = path[s(&mount["mountPath"]).len() + 1..].to_string();
    (volume, rel)
}

/// Each mount names a volume, each volume is mounted.
fn assert_volumes_consistent(pod: &Value) {
    let volumes: Vec<&str> = seq(&pod["volumes"]).iter().map(|v| s(&v["name"])).collect();
    let mounts: Vec<&str> = seq(&pod["containers"])
        .iter()
        .flat_map(|c| seq(&c["volumeMounts"]))
        .map(|m| s(&m["name"]))
        .collect();
    for m in &mounts {
        assert!(volumes.contains(m), "mount of missing volume {m}");
    }
    for v in &volumes {
        assert!(mounts.contains(v), "volume {v} is never mounted");
    }
}

fn probe_path<'a>(c: &'a Value, probe: &str) -> &'a str {
    s(&c[probe]["httpGet"]["path"])
}

/// The APIService reaches the server's pods: its Service exists on the port it names and
/// selects the Deployment's pods on their https port.
fn assert_apiservice_reaches(objs: &[Value], deploy: &Value) {
    let api = one(objs, "APIService");
    assert_eq!(api["spec"]["group"], "ipam.miloapis.com");
    let target = &api["spec"]["service"];
    let svc = all(objs, "Service")
        .into_iter()
        .find(|o| o["metadata"]["name"] == target["name"])
        .expect("the APIService's Service");
    assert_eq!(svc["metadata"]["namespace"], target["namespace"]);
    assert_eq!(deploy["metadata"]["namespace"], target["namespace"]);
    assert!(selects(
        &Value::Mapping(
            [("matchLabels".into(), svc["spec"]["selector"].clone())]
                .into_iter()
                .collect()
        ),
        &deploy["spec"]["template"]["metadata"]["labels"]
    ));
    let port = seq(&svc["spec"]["ports"])
        .iter()
        .find(|p| p["port"] == target["port"])
        .expect("the APIService's port on the Service");
    let c = container(&deploy["spec"]["template"]["spec"], "ipam-apiserver");
    assert!(seq(&c["ports"])
        .iter()
        .any(|p| p["name"] == port["targetPort"]));
}

#[test]
fn the_base_is_one_replica_on_sled() {
    let objs = render("deploy");
    let deploy = one(&objs, "Deployment");
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert_eq!(deploy["spec"]["strategy"]["type"], "Recreate");
    let pod = &deploy["spec"]["template"]["spec"];
    let c = container(pod, "ipam-apiserver");
    let a = args(c);
    assert_eq!(flag(&a, "--data-dir"), Some("/var/lib/ipam"));
    assert!(a.iter().all(|a| !a.starts_with("--etcd")), "{a:?}");
    let (data, _) = volume_for(pod, c, "/var/lib/ipam/db");
    let pvc = one(&objs, "PersistentVolumeClaim");
    assert_eq!(
        data["persistentVolumeClaim"]["claimName"],
        pvc["metadata"]["name"]
    );
    assert_volumes_consistent(pod);
    assert!(all(&objs, "PodDisruptionBudget").is_empty());
    assert_apiservice_reaches(&objs, deploy);
}

#[test]
fn the_ha_overlay_runs_three_replicas_on_etcd() {
    let objs = render("deploy/ha");
    let deploy = one(&objs, "Deployment");
    let spec = &deploy["spec"];
    assert_eq!(spec["replicas"], 3);
    // A rollout never goes below the replicas asked for.
    assert_eq!(spec["strategy"]["type"], "RollingUpdate");
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], 1);
    let labels = &spec["template"]["metadata"]["labels"];
    assert!(selects(&spec["selector"], labels));

    // The budget covers these pods and lets one go at a time.
    let pdb = one(&objs, "PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(
        pdb["metadata"]["namespace"],
        deploy["metadata"]["namespace"]
    );
    assert!(selects(&pdb["spec"]["selector"], labels));
    assert_eq!(pdb["spec"]["minAvailable"], 2);

    // Spread over nodes, counting these pods.
    let pod = &spec["template"]["spec"];
    let by_node = seq(&pod["topologySpreadConstraints"])
        .iter()
        .find(|t| t["topologyKey"] == "kubernetes.io/hostname")
        .expect("a spread across nodes");
    assert_eq!(by_node["maxSkew"], 1);
    assert!(selects(&by_node["labelSelector"], labels));

    // etcd's endpoints and client certificate come from the Secret, as files and a variable
    // the kubelet expands.
    let c = container(pod, "ipam-apiserver");
    let a = args(c);
    assert_eq!(flag(&a, "--etcd-servers"), Some("$(ETCD_SERVERS)"));
    let env = seq(&c["env"])
        .iter()
        .find(|e| e["name"] == "ETCD_SERVERS")
        .expect("ETCD_SERVERS");
    let secret = &env["valueFrom"]["secretKeyRef"];
    assert_eq!(secret["name"], "ipam-etcd-client");
    assert_eq!(secret["key"], "servers");
    for (name, key) in [
        ("--etcd-cafile", "ca.crt"),
        ("--etcd-certfile", "tls.crt"),
        ("--etcd-keyfile", "tls.key"),
    ] {
        let path = flag(&a, name).unwrap_or_else(|| panic!("{name} in {a:?}"));
        let (volume, file) = volume_for(pod, c, path);
        assert_eq!(volume["secret"]["secretName"], "ipam-etcd-client", "{name}");
        assert!(
            seq(&volume["secret"]["items"])
                .iter()
                .any(|i| i["key"] == key && i["path"] == file.as_str()),
            "{name}={path}: the Secret's {key} is not mounted there"
        );
    }
    assert_eq!(flag(&a, "--etcd-prefix"), Some("/registry"));
    assert!(flag(&a, "--etcd-compaction-interval").is_some(), "{a:?}");
    // The other replicas reach each one at its pod IP to hand the leader their creates.
    assert_eq!(flag(&a, "--advertise-address"), Some("$(POD_IP)"));
    let pod_ip = seq(&c["env"])
        .iter()
        .find(|e| e["name"] == "POD_IP")
        .expect("POD_IP");
    assert_eq!(pod_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    assert_eq!(flag(&a, "--tls-cert-file"), Some("/etc/ipam/tls/tls.crt"));
    volume_for(pod, c, "/etc/ipam/tls/tls.crt");

    // Nothing on local disk: no PVC, no --data-dir.
    assert!(all(&objs, "PersistentVolumeClaim").is_empty());
    assert!(flag(&a, "--data-dir").is_none(), "{a:?}");
    assert!(seq(&pod["volumes"])
        .iter()
        .all(|v| v.get("persistentVolumeClaim").is_none()));
    assert_volumes_consistent(pod);

    assert_eq!(probe_path(c, "readinessProbe"), "/readyz");
    assert_eq!(probe_path(c, "livenessProbe"), "/livez");
    assert_eq!(probe_path(c, "startupProbe"), "/livez");
    assert_apiservice_reaches(&objs, deploy);
}

#[test]
fn the_etcd_statefulset_forms_one_cluster_the_overlay_can_reach() {
    let objs = render("deploy/ha/etcd");
    let sts = one(&objs, "StatefulSet");
    let spec = &sts["spec"];
    let name = s(&sts["metadata"]["name"]);
    let ns = s(&sts["metadata"]["namespace"]);
    assert_eq!(spec["replicas"], 3);
    assert_eq!(spec["podManagementPolicy"], "Parallel");
    let labels = &spec["template"]["metadata"]["labels"];
    let svc = all(&objs, "Service")
        .into_iter()
        .find(|o| o["metadata"]["name"] == spec["serviceName"])
        .expect("the StatefulSet's Service");
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["spec"]["publishNotReadyAddresses"], true);
    let svc_name = s(&svc["metadata"]["name"]);
    let pdb = one(&objs, "PodDisruptionBudget");
    assert!(selects(&pdb["spec"]["selector"], labels));
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);

    let pod = &spec["template"]["spec"];
    let c = container(pod, "etcd");
    let a = args(c);
    assert_eq!(flag(&a, "--name"), Some("$(POD_NAME)"));
    // The initial cluster is the StatefulSet's stable names, peers over TLS.
    let members: Vec<String> = (0..3)
        .map(|i| format!("{name}-{i}=https://{name}-{i}.{svc_name}.$(POD_NAMESPACE).svc:2380"))
        .collect();
    assert_eq!(
        flag(&a, "--initial-cluster"),
        Some(members.join(",").as_str())
    );
    assert_eq!(
        flag(&a, "--initial-advertise-peer-urls"),
        Some(format!("https://$(POD_NAME).{svc_name}.$(POD_NAMESPACE).svc:2380").as_str())
    );
    for f in ["--client-cert-auth", "--peer-client-cert-auth"] {
        assert_eq!(flag(&a, f), Some("true"), "{f}");
    }
    for f in [
        "--trusted-ca-file",
        "--cert-file",
        "--key-file",
        "--peer-trusted-ca-file",
    ] {
        let (volume, _) = volume_for(pod, c, flag(&a, f).expect(f));
        assert!(volume["secret"]["secretName"].is_string(), "{f}");
    }
    let quota: u64 = flag(&a, "--quota-backend-bytes")
        .expect("a quota")
        .parse()
        .expect("bytes");
    assert!((2 << 30..=8 << 30).contains(&quota), "{quota}");
    // The server compacts (--etcd-compaction-interval), once across its replicas.
    assert!(
        a.iter().all(|a| !a.starts_with("--auto-compaction")),
        "{a:?}"
    );
    // The data on a claim of its own per member.
    let data = flag(&a, "--data-dir").expect("--data-dir");
    let mount = seq(&c["volumeMounts"])
        .iter()
        .find(|m| data.starts_with(s(&m["mountPath"])))
        .expect("--data-dir on a volume");
    assert!(seq(&spec["volumeClaimTemplates"])
        .iter()
        .any(|t| t["metadata"]["name"] == mount["name"]));
    assert!(c["readinessProbe"]["httpGet"]["path"].is_string());
    assert!(c["livenessProbe"]["httpGet"]["path"].is_string());

    // make-certs.sh: the servers value the overlay passes as --etcd-servers names these members
    // on the client port, and the members' certificate is valid for each name.
    let dir = tempfile::tempdir().expect("temp dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/ha/etcd/make-certs.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(dir.path())
        .env("IPAM_NS", ns)
        .output()
        .expect("run make-certs.sh");
    assert!(out.status.success(), "{out:?}");
    let servers = std::fs::read_to_string(dir.path().join("servers")).expect("servers");
    let want: Vec<String> = (0..3)
        .map(|i| format!("https://{name}-{i}.{svc_name}.{ns}.svc:2379"))
        .collect();
    assert_eq!(servers, want.join(","));
    let sans = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(dir.path().join("member.crt"))
        .output()
        .expect("openssl");
    let sans = String::from_utf8_lossy(&sans.stdout);
    for i in 0..3 {
        assert!(
            sans.contains(&format!("DNS:{name}-{i}.{svc_name}.{ns}.svc,")),
            "{sans}"
        );
    }
    for cert in ["member.crt", "client.crt"] {
        let verify = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(dir.path().join("ca.crt"))
            .arg(dir.path().join(cert))
            .output()
            .expect("openssl");
        assert!(verify.status.success(), "{cert}: {verify:?}");
    }
}
