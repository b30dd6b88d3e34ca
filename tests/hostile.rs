//! Hostile input through the built binary: whatever arrives in the environment, the
//! annotations, the flags or the pod file, the agent exits 0 or 2 with a message, never panics,
//! and writes nothing when it refuses.

mod common;

use proptest::prelude::*;

use common::{Root, agent, run};

fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\[\\]{}\":,a-zA-Z0-9.#\\n\\t /@_-]{0,60}",
        Just(String::from(
            "[{\"ip\":\"10.0.0.1\",\"hostnames\":[\"a\\nb\"]}]"
        )),
        Just(String::from(
            "{\"nameservers\":[\"1.1.1.1\"],\"searches\":[\"a b\"]}"
        )),
        Just(String::from(
            "[{\"ip\":\"::1\",\"hostnames\":[\"x\"]},{\"ip\":1}]"
        )),
        Just("a".repeat(5000)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_input_is_accepted_or_refused_with_exit_2(
        aliases in hostile(), dns in hostile(), http in hostile(), insecure in hostile(),
        image in hostile(), pod in hostile(), channel in 0usize..3,
    ) {
        let root = Root::new("127.0.0.1 localhost\n", "nameserver 10.0.0.2\n");
        let pod_path = root.file("pod.json");
        let pod_json = if channel == 2 {
            serde_json::json!({"metadata": {"annotations": {
                "k8s.ksyun.com/kci-host-aliases": aliases, "k8s.ksyun.com/kci-dns-config": dns,
                "k8s.ksyun.com/kci-http-registry": http, "k8s.ksyun.com/kci-insecure-registry": insecure}},
                "spec": {"containers": [{"name": "c", "image": image}]}}).to_string()
        } else {
            pod.clone()
        };
        std::fs::write(&pod_path, &pod_json).unwrap();
        let before = root.snapshot();
        for command in ["network", "explain"] {
            let mut args: Vec<String> = vec![command.into(), "--root".into(), root.arg().into()];
            let mut cmd = agent(&[]);
            match channel {
                0 => {
                    args.extend([format!("--host-aliases={aliases}"), format!("--dns-config={dns}"),
                        format!("--http-registry={http}"), format!("--insecure-registry={insecure}")]);
                }
                1 => {
                    cmd.env("KCI_HOST_ALIASES", aliases.replace('\0', ""));
                    cmd.env("KCI_DNS_CONFIG", dns.replace('\0', ""));
                    args.extend(["--spec".into(), pod_path.to_str().unwrap().into()]);
                }
                _ => args.extend(["--spec".into(), pod_path.to_str().unwrap().into()]),
            }
            if command == "explain" {
                args.push("--".into());
                args.push(image.clone());
            }
            // Arguments cannot carry NUL bytes; everything else goes through as is.
            let args: Vec<String> = args.into_iter().map(|a| a.replace('\0', "")).collect();
            cmd.args(&args);
            let r = run(&mut cmd);
            prop_assert!(r.code == 0 || r.code == 2, "{command} exit {}: {}", r.code, r.stderr);
            if r.code == 2 {
                prop_assert!(r.stderr.contains("error:") && r.stderr.contains("hint:"), "{}", r.stderr);
                if command == "network" {
                    prop_assert_eq!(&before, &root.snapshot());
                }
            }
        }
    }
}
