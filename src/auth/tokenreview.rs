//! Bearer tokens, judged by the cluster: a `TokenReview` to kube-apiserver, answers cached
//! briefly (by a hash of the token, never the token itself) as k8s.io/apiserver's webhook
//! token authenticator does.
use super::{UserInfo, Verdict};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an accepted token is believed without asking again.
pub const ALLOWED_TTL: Duration = Duration::from_secs(10);
/// How long a rejected token stays rejected.
pub const DENIED_TTL: Duration = Duration::from_secs(5);
/// The cache is pruned of expired entries when it grows past this.
const CACHE_PRUNE_AT: usize = 4096;

type Answer = Result<UserInfo, String>;

pub struct TokenReviewAuthenticator {
    client: kube::Client,
    /// A std mutex: held only to look up or insert, never across the review's await.
    cache: Mutex<HashMap<[u8; 32], (Instant, Answer)>>,
}

impl std::fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewAuthenticator")
            .finish_non_exhaustive()
    }
}

impl TokenReviewAuthenticator {
    pub fn new(client: kube::Client) -> Self {
        TokenReviewAuthenticator {
            client,
            cache: Mutex::default(),
        }
    }

    pub(super) async fn authenticate(&self, req: &http::request::Parts) -> Verdict {
        let Some(token) = bearer_token(req) else {
            return Verdict::NotApplicable;
        };
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .get(&key)
                .filter(|(expires, _)| *expires > Instant::now())
                .map(|(_, answer)| answer.clone())
        };
        let answer = match cached {
            Some(answer) => answer,
            None => {
                let answer = self.review(token).await;
                // A failed call (the cluster unreachable) is not an answer about the token.
                if let Ok(answer) = &answer {
                    let ttl = if answer.is_ok() {
                        ALLOWED_TTL
                    } else {
                        DENIED_TTL
                    };
                    let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                    if cache.len() >= CACHE_PRUNE_AT {
                        let now = Instant::now();
                        cache.retain(|_, (expires, _)| *expires > now);
                    }
                    cache.insert(key, (Instant::now() + ttl, answer.clone()));
                }
                answer.unwrap_or_else(Err)
            }
        };
        match answer {
            Ok(user) => Verdict::Authenticated(user),
            Err(reason) => Verdict::Rejected(reason),
        }
    }

    /// `Ok(answer)` when the cluster answered; `Err` when it could not be asked.
    async fn review(&self, token: &str) -> Result<Answer, String> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("TokenReview failed: {e}"))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Ok(Err(format!(
                "token rejected: {}",
                status.error.unwrap_or_else(|| "not authenticated".into())
            )));
        }
        let user = status.user.unwrap_or_default();
        Ok(Ok(UserInfo {
            username: user.username.unwrap_or_default(),
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default().into_iter().collect(),
        }))
    }
}

fn bearer_token(req: &http::request::Parts) -> Option<&str> {
    let value = req
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
