//! `GET /readyz` of every service, polled through an outage of one of its
//! dependencies: what it answered while the dependency was down, and how
//! soon it answered 200 again. `src/http/health.rs` documents the answer:
//! Postgres and Kafka are required, so while either is unreachable every
//! service is not ready (503, `"status": "not_ready"`, the dependency's
//! check holding the error); Redis is only reported.

use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Pause between one service's polls.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long one poll may take: above the endpoint's own 2 s per check.
const POLL_TIMEOUT: Duration = Duration::from_secs(5);

/// One answer (or failure to answer) of `/readyz`.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The service asked.
    pub service: &'static str,
    /// When the request was sent.
    pub sent: Instant,
    /// When its answer (or error) came.
    pub answered: Instant,
    /// Status and body, or why there was none.
    pub answer: Result<(u16, Value), String>,
}

/// Polls every service's `/readyz` until stopped (answers still on their
/// way then are dropped).
pub struct ReadyzWatch {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: watch::Sender<bool>,
    pollers: Vec<tokio::task::JoinHandle<()>>,
}

impl ReadyzWatch {
    /// Starts polling `services` (name and base URL), each on its own.
    pub fn start(services: Vec<(&'static str, String)>) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = watch::channel(false);
        let http = reqwest::Client::builder()
            .timeout(POLL_TIMEOUT)
            .build()
            .expect("http client");
        let pollers = services
            .into_iter()
            .map(|(service, url)| {
                let (http, samples, mut stopped) = (http.clone(), samples.clone(), stopped.clone());
                tokio::spawn(async move {
                    // A request every POLL_EVERY, without waiting for the last
                    // one: an answer takes up to the endpoint's 2 s check
                    // timeout while a dependency is down, and a 4 s outage
                    // must still see several.
                    while !*stopped.borrow() {
                        let (http, samples, url) = (http.clone(), samples.clone(), url.clone());
                        tokio::spawn(async move {
                            let sent = Instant::now();
                            let answer = match http.get(format!("{url}/readyz")).send().await {
                                Ok(response) => {
                                    let status = response.status().as_u16();
                                    match response.json::<Value>().await {
                                        Ok(body) => Ok((status, body)),
                                        Err(e) => Err(format!("{status} without a JSON body: {e}")),
                                    }
                                }
                                Err(e) => Err(e.to_string()),
                            };
                            samples.lock().expect("samples lock").push(Sample {
                                service,
                                sent,
                                answered: Instant::now(),
                                answer,
                            });
                        });
                        tokio::select! {
                            _ = stopped.changed() => {}
                            _ = tokio::time::sleep(POLL_EVERY) => {}
                        }
                    }
                })
            })
            .collect();
        Self {
            samples,
            stop,
            pollers,
        }
    }

    /// Keeps polling until every service has answered 200 to a request
    /// sent after `since`, or `bound` has passed; then stops and returns
    /// every sample.
    pub async fn stop_once_ready(
        self,
        services: &[&str],
        since: Instant,
        bound: Duration,
    ) -> Vec<Sample> {
        let deadline = since + bound;
        loop {
            let all_ready = {
                let samples = self.samples.lock().expect("samples lock");
                services
                    .iter()
                    .all(|s| ready_again(&samples, s, since).is_some())
            };
            if all_ready || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.stop.send(true);
        for poller in self.pollers {
            let _ = poller.await;
        }
        let samples = self.samples.lock().expect("samples lock");
        samples.clone()
    }
}

/// The first 200 `service` answered to a request sent after `since`.
fn ready_again<'a>(samples: &'a [Sample], service: &str, since: Instant) -> Option<&'a Sample> {
    samples
        .iter()
        .find(|s| s.service == service && s.sent >= since && matches!(s.answer, Ok((200, _))))
}

/// The outage of `dependency` (a check's name in the `/readyz` body) as
/// every service's `/readyz` saw it: each answered every request sent and
/// answered between `down` and `up` (the dependency certainly down) with
/// 503 `not_ready` and an error under `dependency`, at least one such
/// request each, and answered 200 to a request sent after `back` (the
/// dependency certainly working again) within `bound` of it.
pub fn judge(
    samples: &[Sample],
    services: &[&str],
    dependency: &str,
    (down, up): (Instant, Instant),
    back: Instant,
    bound: Duration,
) -> Result<String, String> {
    let mut seen = Vec::new();
    let mut wrong = Vec::new();
    for service in services {
        let during: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.service == *service && s.sent >= down && s.answered <= up)
            .collect();
        let not_ready = |s: &Sample| match &s.answer {
            Ok((503, body)) => {
                body["status"] == "not_ready"
                    && body["checks"][dependency]
                        .as_str()
                        .is_some_and(|c| c != "ok")
            }
            _ => false,
        };
        let unready = during.iter().filter(|s| not_ready(s)).count();
        if during.is_empty() {
            wrong.push(format!(
                "{service}: no /readyz answer while {dependency} was down"
            ));
        } else if unready < during.len() {
            let other = during
                .iter()
                .find(|s| !not_ready(s))
                .expect("one is not 503");
            wrong.push(format!(
                "{service}: {} of {} answers while {dependency} was down were not 503 \
                 not_ready naming {dependency}, e.g. {:?} {:.1} s into the outage",
                during.len() - unready,
                during.len(),
                other.answer,
                other.sent.duration_since(down).as_secs_f64()
            ));
        }
        let error = during
            .first()
            .and_then(|s| s.answer.as_ref().ok())
            .and_then(|(_, body)| body["checks"][dependency].as_str())
            .unwrap_or("?");
        match ready_again(samples, service, back) {
            Some(ready) if ready.answered <= back + bound => seen.push(format!(
                "{service}: {unready}x 503 ({dependency}: {}), 200 {:.1} s after its return",
                error.chars().take(60).collect::<String>(),
                ready.answered.duration_since(back).as_secs_f64()
            )),
            _ => {
                let last = samples.iter().rev().find(|s| s.service == *service);
                wrong.push(format!(
                    "{service}: not ready again within {} s of {dependency}'s return; \
                     last answer {:?}",
                    bound.as_secs(),
                    last.map(|s| &s.answer)
                ));
            }
        }
    }
    if wrong.is_empty() {
        Ok(seen.join("; "))
    } else {
        Err(format!("{} (fine: {})", wrong.join("; "), seen.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(service: &'static str, at: Instant, status: u16, check: &str) -> Sample {
        Sample {
            service,
            sent: at,
            answered: at + Duration::from_millis(10),
            answer: Ok((
                status,
                json!({
                    "status": if status == 200 { "ready" } else { "not_ready" },
                    "checks": {"postgres": check, "kafka": "ok"},
                }),
            )),
        }
    }

    #[test]
    fn readyz_must_be_503_naming_the_dependency_during_the_outage_and_200_after() {
        let t = Instant::now();
        let (down, up, back) = (t, t + Duration::from_secs(5), t + Duration::from_secs(6));
        let bound = Duration::from_secs(30);
        let during = |status, check| sample("product", t + Duration::from_secs(1), status, check);
        let after = sample("product", t + Duration::from_secs(7), 200, "ok");
        let judged = |samples: Vec<Sample>| {
            judge(&samples, &["product"], "postgres", (down, up), back, bound)
        };

        assert!(judged(vec![during(503, "connection refused"), after.clone()]).is_ok());
        // Ready while Postgres is down: the probe lies.
        let lied = judged(vec![during(200, "ok"), after.clone()]);
        assert!(lied.unwrap_err().contains("were not 503"));
        // Not ready, but not for Postgres.
        assert!(judged(vec![during(503, "ok"), after.clone()]).is_err());
        // Never asked during the outage: nothing seen, nothing proven.
        assert!(judged(vec![after.clone()])
            .unwrap_err()
            .contains("no /readyz answer"));
        // Never ready again.
        assert!(judged(vec![during(503, "refused")])
            .unwrap_err()
            .contains("not ready again"));
    }
}
