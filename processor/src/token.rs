//! Bearer tokens: who a management API request acts for. Pure (no I/O): the runtime builds an
//! [`Authenticator`] from its settings ([`crate::runtime::auth`]), and the fuzz target `jwt`
//! reaches the same code without the rest of the runtime.
//!
//! A request carries `Authorization: Bearer <JWT>`. The token is verified with one of the
//! configured keys (HS256 secrets, RS256 or ES256 public keys; several for a rotation), its
//! algorithm must be one those keys verify, and `exp`, `nbf` (when present), `aud` and `iss` are
//! checked. The principal is `sub` plus the roles claim. Without a token a request is
//! anonymous, which only a deployment with anonymous access on allows.

use jsonwebtoken::Validation;
pub use jsonwebtoken::{Algorithm, DecodingKey};

use crate::access::Principal;

/// Verifies bearer tokens.
pub struct Authenticator {
    keys: Vec<(Algorithm, DecodingKey)>,
    audience: String,
    issuer: String,
    roles_claim: String,
    anonymous: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithms: Vec<_> = self.keys.iter().map(|(a, _)| a).collect();
        f.debug_struct("Authenticator").field("algorithms", &algorithms).field("anonymous", &self.anonymous).finish()
    }
}

impl Authenticator {
    /// A verifier of tokens signed with one of `keys` for `audience` by `issuer`, reading roles
    /// from the claim `roles_claim`; `anonymous`: a request without a token is allowed.
    pub fn with_keys(
        keys: Vec<(Algorithm, DecodingKey)>,
        audience: String,
        issuer: String,
        roles_claim: String,
        anonymous: bool,
    ) -> Self {
        Self { keys, audience, issuer, roles_claim, anonymous }
    }

    /// Whether tokens can be verified at all.
    pub fn verifies_tokens(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The principal of a request with this `Authorization` header value: `Ok(None)` for an
    /// anonymous request where that is allowed, `Err` (why, for a 401) otherwise.
    pub fn principal(&self, authorization: Option<&str>) -> Result<Option<Principal>, String> {
        let Some(value) = authorization else {
            return if self.anonymous {
                Ok(None)
            } else {
                Err("this API needs a bearer token: send Authorization: Bearer <JWT> (durable --token or DURABLE_TOKEN)"
                    .into())
            };
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or("the Authorization header must be Bearer <JWT>")?;
        if !self.verifies_tokens() {
            return Err("this deployment verifies no bearer tokens (anonymous access only): send none".into());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("the bearer token is not a JWT: {e}"))?;
        let mut last = None;
        for (algorithm, key) in self.keys.iter().filter(|(a, _)| *a == header.alg) {
            let mut validation = Validation::new(*algorithm);
            validation.set_audience(&[&self.audience]);
            validation.set_issuer(&[&self.issuer]);
            validation.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
            // A token valid only from later (`nbf`) is not valid yet.
            validation.validate_nbf = true;
            match jsonwebtoken::decode::<serde_json::Value>(token, key, &validation) {
                Ok(data) => return self.claims(&data.claims).map(Some),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => format!("the bearer token is not valid: {e}"),
            None => format!("the bearer token is signed with {:?}, which no configured key verifies", header.alg),
        })
    }

    fn claims(&self, claims: &serde_json::Value) -> Result<Principal, String> {
        let user = claims["sub"].as_str().unwrap_or_default().to_owned();
        let roles = match &claims[&self.roles_claim] {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|r| r.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("the token's {:?} claim must be an array of strings", self.roles_claim))?,
            _ => return Err(format!("the token's {:?} claim must be an array of strings", self.roles_claim)),
        };
        let principal = Principal { user, roles };
        principal.check().map_err(|e| format!("the bearer token's principal is not valid: {e}"))?;
        Ok(principal)
    }
}
