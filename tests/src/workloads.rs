//! What deploy/porter.yaml runs, read from the file itself: a workload's
//! container with its args, environment, user, capabilities, root
//! filesystem and host mounts. The lab starts Porter with exactly these, so
//! a change to the manifest is what the lab runs, and the two cannot drift.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use serde_yaml::Value;

/// The agent's DaemonSet and its container.
pub const AGENT: (&str, &str, &str) = ("DaemonSet", "porter-agent", "agent");
/// The controller's Deployment and its container.
pub const CONTROLLER: (&str, &str, &str) = ("Deployment", "porter-controller", "controller");

/// One environment variable of the container.
#[derive(Clone, Debug, PartialEq)]
pub enum EnvValue {
    Literal(String),
    /// `valueFrom.fieldRef.fieldPath` (`spec.nodeName`, `metadata.namespace`, ...).
    Field(String),
}

/// A container as the kubelet would start it.
#[derive(Clone, Debug)]
pub struct Container {
    pub args: Vec<String>,
    pub env: Vec<(String, EnvValue)>,
    /// `runAsUser`/`runAsGroup`, the container's over the pod's; None: the image's.
    pub user: Option<u32>,
    pub group: Option<u32>,
    pub run_as_non_root: bool,
    /// The capabilities added to an empty set (`drop: [ALL]`), as the
    /// manifest spells them (`NET_ADMIN`).
    pub capabilities: Vec<String>,
    pub read_only_root: bool,
    /// `allowPrivilegeEscalation: false`, which the runtime implements as
    /// the no_new_privs bit.
    pub no_new_privs: bool,
    /// hostPath volumes: (path on the host, path in the container).
    pub host_mounts: Vec<(PathBuf, PathBuf)>,
}

/// deploy/porter.yaml of this repository.
pub fn manifest_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/porter.yaml")
}

/// Container `container` of workload `(kind, name)` in deploy/porter.yaml.
pub fn container((kind, name, container): (&str, &str, &str)) -> Result<Container> {
    let path = manifest_path();
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text, kind, name, container).with_context(|| {
        format!(
            "{kind} {name}, container {container}, in {}",
            path.display()
        )
    })
}

fn parse(text: &str, kind: &str, name: &str, container: &str) -> Result<Container> {
    let workload = serde_yaml::Deserializer::from_str(text)
        .map(Value::deserialize)
        .filter_map(Result::ok)
        .find(|doc| doc["kind"] == kind && doc["metadata"]["name"] == name)
        .context("no such workload")?;
    let pod = &workload["spec"]["template"]["spec"];
    let spec = pod["containers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == container)
        .context("no such container")?;
    let (pod_security, security) = (&pod["securityContext"], &spec["securityContext"]);
    // The container's setting wins over the pod's, as in Kubernetes.
    let setting = |key: &str| {
        Some(&security[key])
            .filter(|v| !v.is_null())
            .unwrap_or(&pod_security[key])
    };
    let id = |key: &str| -> Result<Option<u32>> {
        match setting(key) {
            Value::Null => Ok(None),
            value => Ok(Some(
                value
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .with_context(|| format!("{key} is not a number: {value:?}"))?,
            )),
        }
    };
    let capabilities = &security["capabilities"];
    ensure!(
        strings(&capabilities["drop"])? == ["ALL"],
        "the lab starts containers from an empty capability set: `drop: [ALL]` is required"
    );
    ensure!(
        security["privileged"].as_bool() != Some(true),
        "a privileged container is not modelled"
    );
    Ok(Container {
        args: strings(&spec["args"])?,
        env: env(&spec["env"])?,
        user: id("runAsUser")?,
        group: id("runAsGroup")?,
        run_as_non_root: setting("runAsNonRoot").as_bool() == Some(true),
        capabilities: strings(&capabilities["add"])?,
        read_only_root: security["readOnlyRootFilesystem"].as_bool() == Some(true),
        // Kubernetes' default is true: escalation allowed.
        no_new_privs: security["allowPrivilegeEscalation"].as_bool() == Some(false),
        host_mounts: host_mounts(pod, spec)?,
    })
}

fn strings(value: &Value) -> Result<Vec<String>> {
    value
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .with_context(|| format!("not a string: {v:?}"))
        })
        .collect()
}

fn env(value: &Value) -> Result<Vec<(String, EnvValue)>> {
    let mut out = Vec::new();
    for var in value.as_sequence().into_iter().flatten() {
        let name = var["name"]
            .as_str()
            .context("an env entry without a name")?;
        let value = match (
            var["value"].as_str(),
            var["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Some(literal), _) => EnvValue::Literal(literal.to_owned()),
            (None, Some(field)) => EnvValue::Field(field.to_owned()),
            (None, None) => bail!("env {name}: only values and fieldRefs are modelled"),
        };
        out.push((name.to_owned(), value));
    }
    Ok(out)
}

/// Every volume mount, each of which must be a hostPath volume.
fn host_mounts(pod: &Value, container: &Value) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut out = Vec::new();
    for mount in container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        let name = mount["name"]
            .as_str()
            .context("a volumeMount without a name")?;
        let volume = pod["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == name)
            .with_context(|| format!("no volume {name}"))?;
        let host = volume["hostPath"]["path"]
            .as_str()
            .with_context(|| format!("volume {name}: only hostPath volumes are modelled"))?;
        let inside = mount["mountPath"]
            .as_str()
            .with_context(|| format!("volumeMount {name} without a mountPath"))?;
        out.push((host.into(), inside.into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_manifest_gives_each_container() {
        let agent = container(AGENT).expect("the agent's container");
        assert_eq!(agent.user, Some(0));
        assert_eq!(
            agent.capabilities,
            ["BPF", "NET_ADMIN", "PERFMON", "NET_RAW"]
        );
        assert!(agent.read_only_root && agent.no_new_privs);
        assert_eq!(
            agent.host_mounts,
            [(PathBuf::from("/sys/fs/bpf"), PathBuf::from("/sys/fs/bpf"))]
        );
        assert!(agent.args.contains(&"--source=kube".to_owned()));
        assert!(
            agent
                .env
                .contains(&("NODE_NAME".into(), EnvValue::Field("spec.nodeName".into())))
        );

        let controller = container(CONTROLLER).expect("the controller's container");
        // The pod's securityContext, since the container sets no user.
        assert_eq!(
            (controller.user, controller.group),
            (Some(65532), Some(65532))
        );
        assert!(controller.run_as_non_root);
        assert!(controller.capabilities.is_empty());
        assert!(controller.read_only_root && controller.no_new_privs);
        assert!(controller.host_mounts.is_empty());
    }

    #[test]
    fn refuses_what_it_cannot_model() {
        let manifest = |security: &str| {
            format!(
                "kind: Deployment\nmetadata: {{name: d}}\nspec:\n  template:\n    spec:\n      \
                 containers:\n        - name: c\n          securityContext: {security}\n"
            )
        };
        let kept_defaults = parse(
            &manifest("{capabilities: {add: [BPF]}}"),
            "Deployment",
            "d",
            "c",
        );
        assert!(format!("{:#}", kept_defaults.unwrap_err()).contains("drop: [ALL]"));
        let privileged = manifest("{privileged: true, capabilities: {drop: [ALL]}}");
        assert!(parse(&privileged, "Deployment", "d", "c").is_err());
        assert!(
            parse(
                &manifest("{capabilities: {drop: [ALL]}}"),
                "Deployment",
                "x",
                "c"
            )
            .is_err()
        );
    }
}
