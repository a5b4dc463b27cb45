//! Tokens for the servers the suites start: they all check tokens against [`SECRET`].

use std::time::{SystemTime, UNIX_EPOCH};

use execbox_server::auth::{mint, Claims};

/// The secret every test server is started with (`APP_JWT_SECRET`).
pub const SECRET: &str = "sekret";

/// Seed 000's sample token, signed with [`SECRET`].
pub const SEED_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJuYmYiOjE1NTQ3NTU1NTUsImV4cCI6MjU1NDc1NTUwMCwiaWF0IjoxNTU0NzU1NTAwLCJqdGkiOiI5ZmRmMGE2Ni00YzllLTRlOTktODc4MC05YjdlOTNlMjFlMjciLCJ1c2VyX2lkIjoiMTA1YjM1MTgtNjQ2ZC00NjNlLWFkZGEtZDJiOTM5YzJkMDZkIiwidXNlcl9mdWxsX25hbWUiOiJCZXJ0cmFtIEdpbGZveWxlIiwidXNlcl9lbWFpbCI6Im51bGxAcGllZHBpcGVyLmNvbSJ9.-A8Gx18iTikKpedcxDlgcc7D8GMWFix0709Vfpbo1SI";

/// Seconds since the epoch, on the wall clock the server also reads.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims of `user`, valid from now for ten minutes.
pub fn claims(user: &str) -> Claims {
    Claims {
        user_id: Some(user.into()),
        sub: None,
        user_full_name: None,
        user_email: None,
        jti: None,
        iat: Some(now()),
        nbf: Some(now()),
        exp: now() + 600,
    }
}

/// A valid token of `user`.
pub fn token(user: &str) -> String {
    mint(SECRET.as_bytes(), &claims(user)).unwrap()
}
