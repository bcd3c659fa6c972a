//! The route label of the request metrics: the documented template a path
//! matches (`/orders/{id}`), or `unmatched`. Only the routes in a service's
//! OpenAPI document (and the gateway's `/ws`) become label values, so no
//! request, however made up, adds a time series.

/// Label of every path no documented route matches.
pub const UNMATCHED: &str = "unmatched";

/// The route templates of one server.
#[derive(Debug, Clone)]
pub struct Routes {
    /// Each template, and its segments (`None` for a `{parameter}`).
    templates: Vec<(String, Vec<Option<String>>)>,
}

impl Routes {
    /// The routes `service` documents, plus `extra` ones.
    pub fn of(service: &str, extra: &[&str]) -> Self {
        let documented: Vec<String> = super::openapi::document(service)
            .and_then(|doc| {
                doc["paths"]
                    .as_object()
                    .map(|p| p.keys().cloned().collect())
            })
            .unwrap_or_default();
        Self::new(
            documented
                .into_iter()
                .chain(extra.iter().map(|s| (*s).to_owned())),
        )
    }

    /// Routes from their templates (`/orders/{id}`).
    pub fn new(templates: impl IntoIterator<Item = String>) -> Self {
        let templates = templates
            .into_iter()
            .map(|template| {
                let segments = segments(&template)
                    .map(|s| (!(s.starts_with('{') && s.ends_with('}'))).then(|| s.to_owned()))
                    .collect();
                (template, segments)
            })
            .collect();
        Self { templates }
    }

    /// The template `path` matches, else [`UNMATCHED`].
    pub fn label(&self, path: &str) -> &str {
        let wanted: Vec<&str> = segments(path).collect();
        self.templates
            .iter()
            .find(|(_, template)| {
                template.len() == wanted.len()
                    && template
                        .iter()
                        .zip(&wanted)
                        .all(|(t, w)| t.as_deref().is_none_or(|t| t == *w))
            })
            .map_or(UNMATCHED, |(template, _)| template.as_str())
    }
}

/// A path's non-empty segments (`/products/42/` has two).
fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_their_template_or_unmatched() {
        let routes =
            Routes::new(["/", "/orders", "/orders/{id}", "/products/{id}/stock"].map(String::from));
        assert_eq!(
            routes.label("/orders/0190a0b2-7c1e-7d3a-9f00-1234567890ab"),
            "/orders/{id}"
        );
        assert_eq!(routes.label("/orders/"), "/orders");
        assert_eq!(routes.label("/"), "/");
        assert_eq!(routes.label("/products/42/stock"), "/products/{id}/stock");
        assert_eq!(routes.label("/p1/q"), UNMATCHED);
        assert_eq!(routes.label("/orders/1/2"), UNMATCHED);
        assert_eq!(routes.label("/a%20b/<script>"), UNMATCHED);
    }

    #[test]
    fn every_service_labels_its_documented_routes() {
        let gateway = Routes::of("gateway", &["/ws"]);
        assert_eq!(gateway.label("/ws"), "/ws");
        assert_eq!(gateway.label("/metrics"), "/metrics");
        assert_eq!(
            gateway.label("/assets/abc/app.js"),
            "/assets/{version}/{name}"
        );
        let order = Routes::of("order", &[]);
        assert_eq!(order.label("/admin/sagas/stuck"), "/admin/sagas/stuck");
        assert_eq!(order.label("/ws"), UNMATCHED);
    }
}
