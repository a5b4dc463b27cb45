//! Identity at the edge: HS256 JWT bearer tokens signed with `APP_JWT_SECRET` (seed 000).
//! This module verifies tokens and nothing else; what an identified caller may spend is
//! [`crate::quota`]'s.
//!
//! Validation is `jsonwebtoken`'s: the signature, `alg` pinned to HS256 (so `none` and every
//! other algorithm are refused), `exp` required, `nbf` checked when present, with a small
//! leeway for clock skew.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use execbox_proto::ErrorCode;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::state::AppState;

/// Seconds of clock skew tolerated on `exp` and `nbf` by default (`--jwt-leeway-secs`).
pub const LEEWAY_SECS: u64 = 5;

/// The claims execbox reads (others are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Claims {
    /// The caller's id (the seed's claim); `sub` is used when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Standard subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_full_name: Option<String>,
    /// E-mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_email: Option<String>,
    /// Token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Issued at (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Expiry.
    pub exp: i64,
}

/// Who is calling; put in the request's extensions by [`require_auth`].
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The user id, `None` when authentication is disabled (`--insecure-no-auth`).
    pub(crate) user: Option<String>,
    /// The token's claims.
    pub(crate) claims: Option<Claims>,
}

impl Caller {
    /// Everyone, when authentication is disabled (`--insecure-no-auth`).
    pub(crate) fn anonymous() -> Self {
        Self {
            user: None,
            claims: None,
        }
    }
}

/// The secret and rules tokens are checked with.
#[derive(Clone)]
pub(crate) struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator { HS256, secret: <redacted> }")
    }
}

impl Authenticator {
    /// Check tokens against `secret`, tolerating `leeway` of clock skew (whole seconds).
    pub(crate) fn with_leeway(secret: &[u8], leeway: std::time::Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Validate `token` and return the caller.
    pub(crate) fn verify(&self, token: &str) -> Result<Caller, String> {
        let data = decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => "the token has expired".to_owned(),
                K::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
                K::InvalidSignature => "the token's signature does not match".to_owned(),
                K::InvalidAlgorithm => "the token must be signed with HS256".to_owned(),
                K::MissingRequiredClaim(c) => format!("the token has no {c} claim"),
                _ => "the token is malformed".to_owned(),
            }
        })?;
        let c = data.claims;
        let user = c
            .user_id
            .clone()
            .or_else(|| c.sub.clone())
            .filter(|u| !u.is_empty())
            .ok_or("the token has neither user_id nor sub")?;
        Ok(Caller {
            user: Some(user),
            claims: Some(c),
        })
    }

    /// Whether `caller`'s token is still within its `exp` (plus the leeway) now: a long-lived
    /// session (the WebSocket) checks this again before each run it starts.
    pub(crate) fn check_expiry(&self, caller: &Caller) -> Result<(), ApiError> {
        let Some(claims) = &caller.claims else {
            return Ok(());
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let leeway = i64::try_from(self.validation.leeway).unwrap_or(i64::MAX);
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        if claims.exp.saturating_add(leeway) < now {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::TokenExpired,
                "the token has expired; open a new session with a fresh token",
            ));
        }
        Ok(())
    }
}

/// Mint an HS256 token (for `execbox token` and tests).
pub fn mint(secret: &[u8], claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
}

pub(crate) fn unauthorized(code: ErrorCode, message: impl Into<String>) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, code, message).into_response();
    let challenge = if code == "missing_token" {
        r#"Bearer realm="execbox""#
    } else {
        r#"Bearer realm="execbox", error="invalid_token""#
    };
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    r
}

/// Bearer token from an `Authorization` header value.
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Middleware: authenticate, and put the [`Caller`] in the request's extensions (the quota
/// layer, [`crate::quota::rate_limit`], and the handlers read it there).
pub(crate) async fn require_auth(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = match &state.auth {
        None => Caller::anonymous(),
        Some(auth) => {
            let Some(value) = req.headers().get(header::AUTHORIZATION) else {
                return unauthorized(ErrorCode::MissingToken, "send Authorization: Bearer <jwt>");
            };
            let Some(token) = value.to_str().ok().and_then(bearer) else {
                return unauthorized(
                    ErrorCode::InvalidToken,
                    "the Authorization header is not a Bearer token",
                );
            };
            match auth.verify(token) {
                Ok(c) => c,
                Err(why) => return unauthorized(ErrorCode::InvalidToken, why),
            }
        }
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEEWAY: std::time::Duration = std::time::Duration::from_secs(LEEWAY_SECS);

    /// The sample token and secret of seed 000.
    const SEED_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJuYmYiOjE1NTQ3NTU1NTUsImV4cCI6MjU1NDc1NTUwMCwiaWF0IjoxNTU0NzU1NTAwLCJqdGkiOiI5ZmRmMGE2Ni00YzllLTRlOTktODc4MC05YjdlOTNlMjFlMjciLCJ1c2VyX2lkIjoiMTA1YjM1MTgtNjQ2ZC00NjNlLWFkZGEtZDJiOTM5YzJkMDZkIiwidXNlcl9mdWxsX25hbWUiOiJCZXJ0cmFtIEdpbGZveWxlIiwidXNlcl9lbWFpbCI6Im51bGxAcGllZHBpcGVyLmNvbSJ9.-A8Gx18iTikKpedcxDlgcc7D8GMWFix0709Vfpbo1SI";

    #[test]
    fn the_seed_token_carries_the_seed_claims() {
        let c = Authenticator::with_leeway(b"sekret", LEEWAY)
            .verify(SEED_TOKEN)
            .unwrap();
        assert_eq!(
            c.user.as_deref(),
            Some("105b3518-646d-463e-adda-d2b939c2d06d")
        );
        let claims = c.claims.unwrap();
        assert_eq!(claims.user_full_name.as_deref(), Some("Bertram Gilfoyle"));
        assert_eq!(claims.user_email.as_deref(), Some("null@piedpiper.com"));
        assert_eq!(claims.exp, 2_554_755_500);
        assert!(Authenticator::with_leeway(b"wrong", LEEWAY)
            .verify(SEED_TOKEN)
            .is_err());
    }

    #[test]
    fn expiry_is_checked_again_with_the_leeway() {
        let auth = Authenticator::with_leeway(b"k", std::time::Duration::from_secs(5));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let caller = |exp| Caller {
            user: Some("u".into()),
            claims: Some(Claims {
                user_id: Some("u".into()),
                sub: None,
                user_full_name: None,
                user_email: None,
                jti: None,
                iat: None,
                nbf: None,
                exp,
            }),
        };
        assert!(auth.check_expiry(&caller(now + 60)).is_ok());
        assert!(
            auth.check_expiry(&caller(now - 2)).is_ok(),
            "within the leeway"
        );
        let e = auth.check_expiry(&caller(now - 60)).unwrap_err();
        assert_eq!(e.body.error.code, "token_expired");
        assert!(auth.check_expiry(&Caller::anonymous()).is_ok());
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
