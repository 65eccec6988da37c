//! The API contract: an OpenAPI 3.1 document generated from the handlers' `utoipa::path`
//! annotations (the /v1 ones as `v1_routes!` lists them) and the request and response types
//! themselves, served at `/openapi.json`.
//! The responses every /v1 route can give (401, 503) and every body-taking route can
//! give (400, 408, 413, 415) are added here once instead of on each handler.

use std::sync::OnceLock;

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Object, Ref, RefOr, ResponseBuilder, Type};
use utoipa::{Modify, OpenApi};

use crate::error;
use crate::model::{Channel, NotificationRequest, Priority};

/// Where the document is served.
pub const PATH: &str = "/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "A notification dispatcher: notifications (webhook, email, SMS, push) are \
            accepted with a priority, answered 202 once JetStream has stored them, and \
            delivered with retries and a dead-letter queue.",
    ),
    // The /v1 paths come from the routes' one declaration (`v1_routes!`).
    paths(
        healthz,
        readyz,
        openapi_json,
    ),
    components(schemas(
        NotificationRequest,
        Priority,
        Channel,
        error::Body,
        error::Inner,
        crate::status::Outcome,
        crate::dlq::DeadLetter,
        crate::status::Summary,
        crate::status::PriorityCounts,
    )),
    tags(
        (name = "notifications", description = "Sending notifications and reading them back"),
        (name = "dead letters", description = "What could not be delivered: browse, replay, delete"),
        (name = "destinations", description = "Where notifications go: health (circuit state), pause, resume and rate"),
        (name = "webhooks", description = "How Herald signs webhooks (Standard Webhooks): rotating the signing secret"),
        (name = "operations", description = "Health, readiness and this contract (`/metrics` answers on `--metrics-listen`, not here)"),
    )
)]
struct ApiDoc;

/// The document as served (built once).
pub fn document() -> &'static [u8] {
    static DOCUMENT: OnceLock<Vec<u8>> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut openapi = ApiDoc::openapi();
        let (paths, schemas) = super::v1_contract();
        openapi.paths.merge(paths);
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, schema) in schemas {
            components.schemas.entry(name).or_insert(schema);
        }
        Contract.modify(&mut openapi);
        openapi
            .to_json()
            .expect("the generated document serializes")
            .into_bytes()
    })
}

/// The bearer API key, and the responses shared by many routes.
struct Contract;

impl Modify for Contract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        link_operations(openapi);
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                operation.security = Some(vec![SecurityRequirement::new(
                    "api_key",
                    Vec::<String>::new(),
                )]);
                let mut shared = vec![
                    ("401", "No, a malformed, an unknown or a revoked API key"),
                    ("503", "A store or NATS is unreachable, or the server is shutting down; nothing was done"),
                ];
                if operation.request_body.is_some() {
                    shared.extend([
                        ("400", "The body is not JSON, or not valid UTF-8"),
                        ("408", "The body did not arrive in time"),
                        ("413", "The body, or the batch, is too large"),
                        ("415", "Content-Type is not application/json"),
                    ]);
                }
                let responses = &mut operation.responses.responses;
                for (status, description) in shared {
                    responses
                        .entry(status.to_string())
                        .or_insert_with(|| RefOr::T(error_response(description)));
                }
                // ApiError sets Retry-After on every 429 and 503, whichever route answers.
                for status in ["429", "503"] {
                    if let Some(RefOr::T(response)) = responses.get_mut(status) {
                        response
                            .headers
                            .entry(String::from("Retry-After"))
                            .or_insert_with(|| RefOr::T(retry_after()));
                    }
                }
            }
        }
    }
}

/// Where a response leads (OpenAPI links, which stateful testing follows): a sent
/// notification to reading it back and its attempts, a page of dead letters to replaying
/// and deleting its first.
fn link_operations(openapi: &mut utoipa::openapi::OpenApi) {
    let links: [(&str, &str, &str, &str, &[&str]); 2] = [
        (
            "/v1/notifications",
            "202",
            "$response.body#/id",
            "post",
            &["get_notification", "list_attempts"],
        ),
        (
            "/v1/dlq",
            "200",
            "$response.body#/items/0/id",
            "get",
            &["replay_dead_letter", "delete_dead_letter"],
        ),
    ];
    for (path, status, id, method, targets) in links {
        let Some(item) = openapi.paths.paths.get_mut(path) else {
            continue;
        };
        let operation = match method {
            "post" => item.post.as_mut(),
            _ => item.get.as_mut(),
        };
        let Some(RefOr::T(response)) =
            operation.and_then(|o| o.responses.responses.get_mut(status))
        else {
            continue;
        };
        for target in targets {
            let link = LinkBuilder::new()
                .operation_id(*target)
                .parameter("id", id)
                .build();
            response.links.insert(target.to_string(), RefOr::T(link));
        }
    }
}

/// A response with the `Error` body.
fn error_response(description: &str) -> utoipa::openapi::Response {
    let body = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("Error")))
        .build();
    ResponseBuilder::new()
        .description(description)
        .content("application/json", body)
        .build()
}

/// The `Retry-After` header (seconds).
fn retry_after() -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(Some(Object::with_type(Type::Integer)))
        .description(Some("Seconds to wait before trying again"))
        .build()
}

// The health endpoints and this document are answered by `Health::respond` and the
// router's first lines; these annotated functions only describe them.

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Object, example = json!({"status": "ok"}))))]
#[allow(dead_code)]
fn healthz() {}

/// Readiness: the role can do its work (NATS connected, streams present).
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready", body = Object, example = json!({"status": "ready"})),
    (status = 503, description = "Not ready, and why", body = Object,
        example = json!({"status": "unready", "reason": "NATS is disconnected"})),
))]
#[allow(dead_code)]
fn readyz() {}

/// This contract.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
#[allow(dead_code)]
fn openapi_json() {}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::lifecycle::Health;

    fn contract() -> serde_json::Value {
        serde_json::from_slice(document()).unwrap()
    }

    #[test]
    fn the_contract_names_exactly_the_routes_the_router_has() {
        let doc = contract();
        assert_eq!(doc["openapi"], "3.1.0");
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .map(move |method| (method.to_uppercase(), path.clone()))
            })
            .collect();
        let routed: BTreeSet<(String, String)> = super::super::routes()
            .iter()
            .map(|(method, path, _)| (method.to_string(), path.to_string()))
            .chain(
                Health::PROBE_PATHS
                    .iter()
                    .chain([&PATH])
                    .map(|path| (String::from("GET"), path.to_string())),
            )
            .collect();
        assert_eq!(documented, routed);
    }

    #[test]
    fn every_response_is_described_and_every_reference_resolves() {
        let doc = contract();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let responses = operation["responses"].as_object().unwrap();
                assert!(!responses.is_empty(), "{method} {path}");
                for (status, response) in responses {
                    let described = response["description"].as_str().unwrap_or("");
                    assert!(!described.is_empty(), "{method} {path} {status}");
                }
                if path.starts_with("/v1/") {
                    assert!(responses.contains_key("401"), "{method} {path}");
                    assert_eq!(operation["security"][0]["api_key"], serde_json::json!([]));
                }
            }
        }
        let operation_ids: BTreeSet<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .map(|operation| operation["operationId"].as_str().unwrap())
            .collect();
        let mut links = 0;
        for item in doc["paths"].as_object().unwrap().values() {
            for operation in item.as_object().unwrap().values() {
                for response in operation["responses"].as_object().unwrap().values() {
                    for link in response["links"]
                        .as_object()
                        .into_iter()
                        .flat_map(|l| l.values())
                    {
                        let target = link["operationId"].as_str().unwrap();
                        assert!(operation_ids.contains(target), "link to {target}");
                        links += 1;
                    }
                }
            }
        }
        assert_eq!(
            links, 4,
            "send → read back, attempts; dead letters → replay, delete"
        );
        let text = String::from_utf8(document().to_vec()).unwrap();
        for reference in text.split("\"#/components/schemas/").skip(1) {
            let name = &reference[..reference.find('"').unwrap()];
            assert!(
                schemas.contains_key(name),
                "{name} is referenced but not defined"
            );
        }
    }
}
