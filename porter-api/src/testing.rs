//! Test helpers for this crate and the binaries' (feature `testing`): a mock
//! API server, a kube [`Client`] whose requests are recorded and answered by
//! a closure, so a test can check what a writer sends without a cluster; and
//! object fixtures.

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Client;
use kube::client::Body;

/// The Service `shop/web` with these annotations and `spec`, no status.
pub fn service(annotations: &[(&str, &str)], spec: ServiceSpec) -> Service {
    service_in("shop", "web", annotations, spec)
}

/// The Service `namespace/name` with these annotations and `spec`, no status.
pub fn service_in(
    namespace: &str,
    name: &str,
    annotations: &[(&str, &str)],
    spec: ServiceSpec,
) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// A `type: LoadBalancer` spec with one port, 80.
pub fn load_balancer_on_80() -> ServiceSpec {
    ServiceSpec {
        ports: Some(vec![ServicePort {
            port: 80,
            ..Default::default()
        }]),
        ..load_balancer(None)
    }
}

/// A `type: LoadBalancer` spec with this `loadBalancerClass`.
pub fn load_balancer(class: Option<&str>) -> ServiceSpec {
    ServiceSpec {
        type_: Some("LoadBalancer".into()),
        load_balancer_class: class.map(str::to_string),
        ..Default::default()
    }
}

/// Port `port` of a Service, named `name`, over `protocol` ("TCP",
/// "UDP"), to `target` (None: the same port).
pub fn service_port(
    name: &str,
    port: i32,
    target: Option<IntOrString>,
    protocol: &str,
) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: target,
        protocol: Some(protocol.into()),
        ..Default::default()
    }
}

/// A Node with these InternalIPs, and nothing else.
pub fn node_with_ips(name: &str, internal_ips: &[&str]) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: None,
        status: Some(NodeStatus {
            addresses: Some(
                internal_ips
                    .iter()
                    .map(|ip| NodeAddress {
                        type_: "InternalIP".into(),
                        address: ip.to_string(),
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
    }
}

/// The EndpointSlice `namespace/name` of Service `service` (its
/// `kubernetes.io/service-name` label), of address type `family` ("IPv4",
/// "IPv6"), with these ports and endpoints.
pub fn endpoint_slice(
    (namespace, name): (&str, &str),
    service: &str,
    family: &str,
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(
                [(
                    crate::annotations::SERVICE_NAME_LABEL.to_string(),
                    service.to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        address_type: family.into(),
        endpoints: Some(endpoints),
        ports: Some(ports),
    }
}

/// An endpoint at `address` on node `node`.
pub fn endpoint(address: &str, node: &str, conditions: EndpointConditions) -> Endpoint {
    Endpoint {
        addresses: vec![address.into()],
        node_name: Some(node.into()),
        conditions: Some(conditions),
        ..Default::default()
    }
}

/// A named EndpointSlice port over `protocol`.
pub fn endpoint_port(name: &str, port: i32, protocol: &str) -> EndpointPort {
    EndpointPort {
        name: Some(name.into()),
        port: Some(port),
        protocol: Some(protocol.into()),
        ..Default::default()
    }
}

/// One request as the API server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub content_type: String,
    pub body: serde_json::Value,
}

/// What the mock API server saw, in order.
pub type Log = Arc<Mutex<Vec<Seen>>>;

pub fn seen(log: &Log) -> Vec<Seen> {
    log.lock().map(|l| l.clone()).unwrap_or_default()
}

/// A client whose API server answers every request with `reply(request)`.
/// Requests are recorded before they are answered, so once a call returns,
/// its request is in the log. Needs a tokio runtime.
pub fn mock_client(reply: impl Fn(&Seen) -> serde_json::Value + Send + 'static) -> (Client, Log) {
    mock_client_with_status(move |seen| (200, reply(seen)))
}

/// [`mock_client`] whose answers carry an HTTP status too: `(404, a
/// Status object)` for an object that does not exist, 403 for a refused
/// request, 5xx for an API server in trouble.
pub fn mock_client_with_status(
    reply: impl Fn(&Seen) -> (u16, serde_json::Value) + Send + 'static,
) -> (Client, Log) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log: Log = Arc::default();
    let server_log = log.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let seen = Seen {
                method: parts.method,
                uri: parts.uri.to_string(),
                content_type: parts
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            };
            let (status, answer) = reply(&seen);
            let answer = serde_json::to_vec(&answer).unwrap_or_default();
            if let Ok(mut l) = server_log.lock() {
                l.push(seen);
            }
            match Response::builder().status(status).body(Body::from(answer)) {
                Ok(response) => send.send_response(response),
                Err(_) => return,
            }
        }
    });
    (Client::new(service, "default"), log)
}
