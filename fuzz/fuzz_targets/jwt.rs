//! Any `Authorization` header, any claims signed with the deployment's key, and any change to a
//! valid token: verifying never panics; a token is accepted only with its audience, issuer and
//! an expiry, for the `sub` it names; and no change to a valid token is accepted as another.
#![no_main]

use durable_processor::token::{Algorithm, Authenticator, DecodingKey};
use jsonwebtoken::{encode, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const SECRET: &[u8] = b"the fuzz target's secret, of 32+ bytes";

fn sign(claims: &Value) -> String {
    encode(&Header::default(), claims, &EncodingKey::from_secret(SECRET)).expect("any JSON value signs")
}

fuzz_target!(|data: &[u8]| {
    let keys = vec![(Algorithm::HS256, DecodingKey::from_secret(SECRET))];
    let auth = Authenticator::with_keys(keys, "durable".into(), "fuzz".into(), "roles".into(), false);
    let Some((&mode, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    match mode % 4 {
        0 => {
            let _ = auth.principal(Some(&text));
        }
        1 => {
            let _ = auth.principal(Some(&format!("Bearer {text}")));
        }
        2 => {
            // Claims of any shape, properly signed.
            let Ok(claims) = serde_json::from_slice::<Value>(rest) else { return };
            if let Ok(Some(p)) = auth.principal(Some(&format!("Bearer {}", sign(&claims)))) {
                let aud_ok = claims["aud"] == "durable"
                    || claims["aud"].as_array().is_some_and(|a| a.iter().any(|x| x == "durable"));
                assert!(aud_ok && claims["iss"] == "fuzz", "accepted without its audience and issuer: {claims}");
                assert!(claims["exp"].is_number(), "accepted without an expiry: {claims}");
                assert_eq!(claims["sub"].as_str(), Some(p.user.as_str()), "{claims}");
                assert!(p.check().is_ok(), "{p:?}");
            }
        }
        _ => {
            // A valid token with bits flipped where the input says.
            let claims = json!({"sub": "alice", "roles": ["staff"], "aud": "durable", "iss": "fuzz", "exp": 4_102_444_800u64});
            let valid = sign(&claims);
            let mut bytes = valid.clone().into_bytes();
            for pair in rest.chunks_exact(2) {
                let i = pair[0] as usize * 251 % bytes.len();
                bytes[i] ^= pair[1];
            }
            let Ok(tampered) = String::from_utf8(bytes) else { return };
            if tampered == valid {
                return;
            }
            if let Ok(Some(p)) = auth.principal(Some(&format!("Bearer {tampered}"))) {
                // Base64url's last character of a part may carry unused bits: the same token.
                let ends: Vec<usize> = valid.match_indices('.').map(|(i, _)| i - 1).chain([valid.len() - 1]).collect();
                let only_unused_bits = tampered.len() == valid.len()
                    && tampered.bytes().zip(valid.bytes()).enumerate().all(|(i, (a, b))| a == b || ends.contains(&i));
                assert!(only_unused_bits, "a tampered token was accepted as {p:?}: {tampered}");
                assert_eq!(p.user, "alice");
            }
        }
    }
});
