//! Bearer tokens from the deployment's settings: the keys to verify them with
//! ([`crate::token`] verifies).

use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::AuthConfig;
pub use crate::token::Authenticator;

/// Shortest HS256 secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

impl Authenticator {
    /// The verifier the settings describe, or what to fix (never quoting a secret).
    pub fn new(config: &AuthConfig) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for (i, secret) in config.jwt_secrets.iter().enumerate() {
            let bytes = secret.expose().as_bytes();
            if bytes.len() < MIN_SECRET_BYTES {
                anyhow::bail!(
                    "DURABLE_JWT_SECRETS: secret {} of {} is {} bytes; HS256 secrets need at least {MIN_SECRET_BYTES}",
                    i + 1,
                    config.jwt_secrets.len(),
                    bytes.len()
                );
            }
            keys.push((Algorithm::HS256, DecodingKey::from_secret(bytes)));
        }
        for path in &config.jwt_public_keys {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("DURABLE_JWT_PUBLIC_KEYS: cannot read {}: {e}", path.display()))?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .map(|k| (Algorithm::RS256, k))
                .or_else(|_| DecodingKey::from_ec_pem(&pem).map(|k| (Algorithm::ES256, k)))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "DURABLE_JWT_PUBLIC_KEYS: {} is not a PEM RSA or EC (P-256) public key",
                        path.display()
                    )
                })?;
            keys.push(key);
        }
        let (audience, issuer) = match (&config.jwt_audience, &config.jwt_issuer) {
            (Some(a), Some(i)) => (a.clone(), i.clone()),
            _ if keys.is_empty() => (String::new(), String::new()),
            _ => anyhow::bail!(
                "bearer tokens are checked for their audience and issuer: set DURABLE_JWT_AUDIENCE and DURABLE_JWT_ISSUER"
            ),
        };
        if keys.is_empty() && !config.anonymous {
            anyhow::bail!(
                "no way to tell who a request is: set DURABLE_JWT_SECRETS or DURABLE_JWT_PUBLIC_KEYS (with \
                 DURABLE_JWT_AUDIENCE and DURABLE_JWT_ISSUER) to verify bearer tokens, or DURABLE_ANONYMOUS=true \
                 for development"
            );
        }
        Ok(Self::with_keys(keys, audience, issuer, config.jwt_roles_claim.clone(), config.anonymous))
    }
}

#[cfg(test)]
mod tests {
    use durable_kafka::Secret;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::access::Principal;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn config() -> AuthConfig {
        let mut c = AuthConfig::anonymous();
        c.anonymous = false;
        c.jwt_secrets = vec![Secret::new(SECRET)];
        c.jwt_audience = Some("durable".into());
        c.jwt_issuer = Some("https://id.example".into());
        c
    }

    fn token(secret: &str, claims: serde_json::Value) -> String {
        encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    fn claims(exp_in: i64) -> serde_json::Value {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        json!({"sub": "alice", "roles": ["staff"], "aud": "durable", "iss": "https://id.example", "exp": now + exp_in})
    }

    #[test]
    fn a_valid_token_gives_its_principal_and_anything_else_is_refused_with_the_reason() {
        let auth = Authenticator::new(&config()).unwrap();
        let ok = format!("Bearer {}", token(SECRET, claims(600)));
        assert_eq!(auth.principal(Some(&ok)).unwrap(), Some(Principal::new("alice", ["staff"])));
        let refused = |header: &str| match auth.principal(Some(header)) {
            Err(e) => e,
            Ok(p) => panic!("accepted {header}: {p:?}"),
        };
        assert!(refused(&format!("Bearer {}", token(SECRET, claims(-600)))).contains("ExpiredSignature"));
        let other = token("another secret of thirty-two bytes!", claims(600));
        assert!(refused(&format!("Bearer {other}")).contains("InvalidSignature"));
        let mut wrong_aud = claims(600);
        wrong_aud["aud"] = json!("someone-else");
        assert!(refused(&format!("Bearer {}", token(SECRET, wrong_aud))).contains("InvalidAudience"));
        let mut wrong_iss = claims(600);
        wrong_iss["iss"] = json!("https://evil.example");
        assert!(refused(&format!("Bearer {}", token(SECRET, wrong_iss))).contains("InvalidIssuer"));
        let mut no_exp = claims(600);
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(refused(&format!("Bearer {}", token(SECRET, no_exp))).contains("Missing required claim: exp"));
        let mut bad_roles = claims(600);
        bad_roles["roles"] = json!("admin");
        assert!(refused(&format!("Bearer {}", token(SECRET, bad_roles))).contains("array of strings"));
        assert!(refused("Basic YWxpY2U6c2VjcmV0").contains("Bearer <JWT>"));
        assert!(refused("Bearer not-a-jwt").contains("not a JWT"));
        // An unsigned token ("alg": "none") never passes.
        let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJyb290Iiwicm9sZXMiOlsiYWRtaW4iXX0.";
        assert!(auth.principal(Some(&format!("Bearer {unsigned}"))).is_err());
        // No token: refused unless anonymous access is on.
        assert!(auth.principal(None).unwrap_err().contains("needs a bearer token"));
        let open = Authenticator::new(&AuthConfig { anonymous: true, ..config() }).unwrap();
        assert_eq!(open.principal(None).unwrap(), None);
        // No error quotes the secret.
        for e in [refused("Bearer x.y.z"), refused(&format!("Bearer {}", token(SECRET, claims(-600))))] {
            assert!(!e.contains(SECRET), "{e}");
        }
    }

    /// A token whose `nbf` lies ahead is not valid yet; one whose `nbf` has passed is.
    #[test]
    fn a_token_is_refused_before_its_not_before_time() {
        let auth = Authenticator::new(&config()).unwrap();
        let now = claims(0)["exp"].as_i64().unwrap();
        let mut early = claims(7200);
        early["nbf"] = json!(now + 3600);
        let e = auth.principal(Some(&format!("Bearer {}", token(SECRET, early)))).unwrap_err();
        assert!(e.contains("ImmatureSignature"), "{e}");
        let mut ripe = claims(7200);
        ripe["nbf"] = json!(now - 60);
        assert!(auth.principal(Some(&format!("Bearer {}", token(SECRET, ripe)))).is_ok());
    }

    /// RS256 and ES256 tokens verify with their public keys (files, as configured), and neither
    /// key verifies the other's tokens, nor does an HS256 token signed with a public key's bytes
    /// (the algorithm confusion attack) pass.
    #[test]
    fn rs256_and_es256_tokens_verify_with_their_public_keys_only() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/jwt");
        let key = |name: &str| std::fs::read(dir.join(name)).unwrap();
        let auth = Authenticator::new(&AuthConfig {
            jwt_secrets: vec![],
            jwt_public_keys: vec![dir.join("rs256.pub"), dir.join("es256.pub")],
            ..config()
        })
        .unwrap();
        let rs = EncodingKey::from_rsa_pem(&key("rs256.key")).unwrap();
        let es = EncodingKey::from_ec_pem(&key("es256.key")).unwrap();
        let sign = |alg: Algorithm, key: &EncodingKey, claims: serde_json::Value| {
            format!("Bearer {}", encode(&Header::new(alg), &claims, key).unwrap())
        };
        let alice = Some(Principal::new("alice", ["staff"]));
        assert_eq!(auth.principal(Some(&sign(Algorithm::RS256, &rs, claims(600)))).unwrap(), alice);
        assert_eq!(auth.principal(Some(&sign(Algorithm::ES256, &es, claims(600)))).unwrap(), alice);
        assert!(auth.principal(Some(&sign(Algorithm::RS256, &rs, claims(-600)))).is_err(), "expired");
        // Algorithm confusion: an HS256 token keyed with the public key's PEM bytes.
        let confused = EncodingKey::from_secret(&key("rs256.pub"));
        let e = auth.principal(Some(&sign(Algorithm::HS256, &confused, claims(600)))).unwrap_err();
        assert!(e.contains("no configured key verifies"), "{e}");
        // With only the ES256 key configured, the RS256 token has no key to verify it.
        let es_only = Authenticator::new(&AuthConfig {
            jwt_secrets: vec![],
            jwt_public_keys: vec![dir.join("es256.pub")],
            ..config()
        })
        .unwrap();
        assert!(es_only.principal(Some(&sign(Algorithm::RS256, &rs, claims(600)))).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// Any header value at all: an answer (a principal or why not), never a panic; and no
        /// change to a valid token — one byte flipped anywhere — is ever accepted.
        #[test]
        fn hostile_authorization_headers_are_refused_never_panic(
            header in ".{0,300}",
            flip in 0usize..400,
            bit in 0u8..8,
        ) {
            let auth = Authenticator::new(&config()).unwrap();
            let _ = auth.principal(Some(&header));
            let _ = auth.principal(Some(&format!("Bearer {header}")));
            let valid = token(SECRET, claims(600));
            let mut bytes = valid.clone().into_bytes();
            let i = flip % bytes.len();
            bytes[i] ^= 1 << bit;
            if let Ok(tampered) = String::from_utf8(bytes) {
                if tampered != valid {
                    if let Ok(Some(p)) = auth.principal(Some(&format!("Bearer {tampered}"))) {
                        // Base64url's last character may carry unused bits: the same token.
                        let same = tampered.split('.').map(str::len).eq(valid.split('.').map(str::len))
                            && i + 1 == valid.len();
                        proptest::prop_assert!(same, "a tampered token was accepted as {p:?}: {tampered}");
                    }
                }
            }
        }
    }

    #[test]
    fn rotation_accepts_every_configured_secret() {
        let old = "the old secret, thirty-two bytes!";
        let auth =
            Authenticator::new(&AuthConfig { jwt_secrets: vec![Secret::new(SECRET), Secret::new(old)], ..config() })
                .unwrap();
        for secret in [SECRET, old] {
            assert!(auth.principal(Some(&format!("Bearer {}", token(secret, claims(60))))).is_ok());
        }
    }

    #[test]
    fn settings_that_cannot_work_are_refused_at_start_without_quoting_secrets() {
        let short = Authenticator::new(&AuthConfig { jwt_secrets: vec![Secret::new("short")], ..config() });
        let e = short.unwrap_err().to_string();
        assert!(e.contains("at least 32") && !e.contains("short\""), "{e}");
        let no_audience = Authenticator::new(&AuthConfig { jwt_audience: None, ..config() });
        assert!(no_audience.unwrap_err().to_string().contains("DURABLE_JWT_AUDIENCE"));
        let nothing = Authenticator::new(&AuthConfig { jwt_secrets: vec![], ..config() });
        assert!(nothing.unwrap_err().to_string().contains("DURABLE_ANONYMOUS=true"));
        let missing = Authenticator::new(&AuthConfig { jwt_public_keys: vec!["/nonexistent.pem".into()], ..config() });
        assert!(missing.unwrap_err().to_string().contains("cannot read /nonexistent.pem"));
    }
}
