//! JWT bearer tokens: which keys verify them, how a development machine gets
//! a key without configuration, how `shop token` signs one, and the warp
//! filter that turns an `Authorization` header into a [`Principal`].
//!
//! Accepted: HS256 with a shared secret (`JWT_SECRET`), and RS256 or ES256
//! with a public key in PEM (`JWT_PUBLIC_KEY_FILE`), which is what an
//! identity provider such as Keycloak issues. Both may be set; a token's
//! `alg` picks the key, and no other algorithm is accepted. Claims: `sub`
//! is the customer id (refused if it could never be one: see
//! [`shop_actors::order::model::is_valid_customer_id`]), `role` is
//! `customer` or `admin`, `exp` is required, `nbf` is honoured (both with
//! the same leeway), and `aud` and `iss` are checked when `JWT_AUDIENCE`
//! and `JWT_ISSUER` are set (and then required). A `crit` header is
//! refused: shop understands no JWS extension.
//!
//! With neither set, every service runs in development mode: a random secret
//! is kept in a file only its user can read (created on first start, reused
//! after), and a warning says so.

use crate::http::error::ApiError;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
pub use shop_actors::auth::{Principal, Role};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use warp::{Filter, Rejection};

/// Shortest shared secret accepted, in bytes (HS256 wants at least its
/// hash size; shorter secrets are brute-forceable).
pub const MIN_SECRET_LEN: usize = 32;
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 30;

/// A secret from the command line or environment: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// Why a key could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The shared secret is too short.
    #[error("JWT_SECRET must be at least {MIN_SECRET_LEN} bytes")]
    ShortSecret,
    /// The public key file cannot be read.
    #[error("cannot read JWT_PUBLIC_KEY_FILE {path}: {source}")]
    ReadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The public key file is neither an RSA nor an EC (P-256) public key.
    #[error("JWT_PUBLIC_KEY_FILE {0} is not an RSA or P-256 public key in PEM")]
    BadKey(PathBuf),
    /// The development secret file cannot be created or read.
    #[error("development JWT secret {path}: {source}")]
    DevSecret {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Only a public key is configured, so nothing can be signed here.
    #[error("no shared secret to sign with: set JWT_SECRET (a public key only verifies)")]
    CannotSign,
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header (or WebSocket protocol).
    #[error("a bearer token is required")]
    Missing,
    /// The token has expired.
    #[error("the token has expired")]
    Expired,
    /// Malformed, wrongly signed, or with bad claims.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// The claims shop reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The customer id.
    pub sub: String,
    /// Customer or admin.
    pub role: Role,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    #[serde(default)]
    pub iat: u64,
}

/// Verifies tokens (and, with a shared secret, signs them); cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    keys: Arc<Keys>,
    /// The `aud` and `iss` a token must carry, when set.
    expected: Arc<Expected>,
}

/// Claims a token must carry, beyond the signature.
#[derive(Debug, Default, Clone)]
pub struct Expected {
    /// `JWT_AUDIENCE`: one of the token's `aud` values.
    pub audience: Option<String>,
    /// `JWT_ISSUER`: the token's `iss`.
    pub issuer: Option<String>,
}

struct Keys {
    /// HS256: signs and verifies.
    shared: Option<(EncodingKey, DecodingKey)>,
    /// RS256 or ES256: verifies only.
    public: Option<(Algorithm, DecodingKey)>,
}

/// Where the keys came from, for the start-up log (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `JWT_SECRET` and/or `JWT_PUBLIC_KEY_FILE`.
    Configured,
    /// The development secret in this file.
    Development {
        /// The file.
        path: PathBuf,
        /// Whether it was created just now.
        created: bool,
    },
}

impl Authenticator {
    /// Verifies HS256 tokens signed with `secret`, and signs them.
    pub fn from_secret(secret: &[u8]) -> Result<Self, KeyError> {
        Self::new(Some(secret), None)
    }

    /// Verifies with `secret` (HS256) and/or a PEM public key (RS256 or
    /// ES256, told apart by the key).
    pub fn new(
        secret: Option<&[u8]>,
        public_key: Option<(&Path, &[u8])>,
    ) -> Result<Self, KeyError> {
        let shared = match secret {
            Some(secret) if secret.len() < MIN_SECRET_LEN => return Err(KeyError::ShortSecret),
            Some(secret) => Some((
                EncodingKey::from_secret(secret),
                DecodingKey::from_secret(secret),
            )),
            None => None,
        };
        let public = match public_key {
            None => None,
            Some((path, pem)) => Some(
                DecodingKey::from_rsa_pem(pem)
                    .map(|key| (Algorithm::RS256, key))
                    .or_else(|_| DecodingKey::from_ec_pem(pem).map(|key| (Algorithm::ES256, key)))
                    .map_err(|_| KeyError::BadKey(path.to_owned()))?,
            ),
        };
        Ok(Self {
            keys: Arc::new(Keys { shared, public }),
            expected: Arc::new(Expected::default()),
        })
    }

    /// This authenticator, also requiring `expected`'s audience and issuer.
    pub fn expecting(mut self, expected: Expected) -> Self {
        self.expected = Arc::new(expected);
        self
    }

    /// The caller a token stands for.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 => self.keys.shared.as_ref().map(|(_, key)| key),
            alg => self
                .keys
                .public
                .as_ref()
                .filter(|(expected, _)| *expected == alg)
                .map(|(_, key)| key),
        }
        .ok_or_else(|| AuthError::Invalid(format!("algorithm {:?} is not accepted", header.alg)))?;
        if let Some(crit) = header.crit.as_ref() {
            return Err(AuthError::Invalid(format!(
                "critical header extensions {crit:?} are not understood"
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &self.expected.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // Any audience when none is configured: identity providers put
            // one in every access token.
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.expected.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e
            .kind()
        {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        let subject = data.claims.sub.trim();
        if !shop_actors::order::model::is_valid_customer_id(subject) {
            return Err(AuthError::Invalid(format!(
                "sub must be 1 to {} bytes, none of them control characters",
                shop_actors::order::model::MAX_CUSTOMER_ID_LEN
            )));
        }
        Ok(Principal {
            subject: subject.to_owned(),
            role: data.claims.role,
        })
    }

    /// A token for `subject` with `role`, valid for `ttl` (HS256, so only
    /// with a shared secret).
    pub fn mint(&self, subject: &str, role: Role, ttl: Duration) -> Result<String, KeyError> {
        self.mint_expiring(subject, role, SystemTime::now() + ttl)
    }

    /// A token that expires at `expires` (which may be in the past: tests).
    pub fn mint_expiring(
        &self,
        subject: &str,
        role: Role,
        expires: SystemTime,
    ) -> Result<String, KeyError> {
        let (key, _) = self.keys.shared.as_ref().ok_or(KeyError::CannotSign)?;
        let seconds = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = Claims {
            sub: subject.to_owned(),
            role,
            exp: seconds(expires),
            iat: seconds(SystemTime::now()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }
}

/// The authenticator the settings describe: the configured keys, or the
/// development secret (created if missing).
pub fn load(settings: &crate::Settings) -> Result<(Authenticator, KeySource), KeyError> {
    let expected = Expected {
        audience: settings.jwt_audience.clone(),
        issuer: settings.jwt_issuer.clone(),
    };
    let secret = settings.jwt_secret.as_ref().map(|s| s.0.as_bytes());
    let public = match &settings.jwt_public_key_file {
        None => None,
        Some(path) => Some((
            path.clone(),
            std::fs::read(path).map_err(|source| KeyError::ReadKey {
                path: path.clone(),
                source,
            })?,
        )),
    };
    if secret.is_some() || public.is_some() {
        let public = public
            .as_ref()
            .map(|(p, pem)| (p.as_path(), pem.as_slice()));
        return Ok((
            Authenticator::new(secret, public)?.expecting(expected),
            KeySource::Configured,
        ));
    }
    let path = settings.jwt_dev_secret_file();
    let (secret, created) = dev_secret(&path)?;
    Ok((
        Authenticator::from_secret(secret.as_bytes())?.expecting(expected),
        KeySource::Development { path, created },
    ))
}

/// Reads the development secret at `path`, creating it (readable by its
/// owner only) with 64 random hex characters if it does not exist.
pub fn dev_secret(path: &Path) -> Result<(String, bool), KeyError> {
    let error = |source| KeyError::DevSecret {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(secret) => return Ok((secret.trim().to_owned(), false)),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(error(e)),
        Err(_) => {}
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(error)?;
    }
    // Two v4 UUIDs: 244 bits from the operating system's random source.
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            std::io::Write::write_all(&mut file, secret.as_bytes()).map_err(error)?;
            Ok((secret, true))
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let secret = std::fs::read_to_string(path).map_err(error)?;
            Ok((secret.trim().to_owned(), false))
        }
        Err(e) => Err(error(e)),
    }
}

/// The bearer token of an `Authorization` header value, if it is one.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The caller of a request, from `Authorization: Bearer <token>`; 401 if
/// missing or invalid.
pub fn caller(
    auth: Authenticator,
) -> impl Filter<Extract = (Principal,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization").and_then(move |header: Option<String>| {
        let auth = auth.clone();
        async move {
            let token = header
                .as_deref()
                .and_then(bearer_token)
                .ok_or(AuthError::Missing)
                .map_err(|e| Rejection::from(ApiError::Unauthorized(e.to_string())))?;
            auth.verify(token)
                .map_err(|e| Rejection::from(ApiError::Unauthorized(e.to_string())))
        }
    })
}

/// [`caller`], who must be an admin; 403 otherwise.
pub fn admin(
    auth: Authenticator,
) -> impl Filter<Extract = (Principal,), Error = Rejection> + Clone {
    caller(auth).and_then(|principal: Principal| async move {
        if principal.is_admin() {
            Ok(principal)
        } else {
            Err(Rejection::from(ApiError::Forbidden(
                "this needs an admin token".into(),
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_minted_token_verifies_and_carries_its_claims() {
        let auth = Authenticator::from_secret(SECRET).unwrap();
        let token = auth
            .mint("alice", Role::Customer, Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            auth.verify(&token).unwrap(),
            Principal {
                subject: "alice".into(),
                role: Role::Customer
            }
        );
    }

    #[test]
    fn expired_malformed_and_foreign_tokens_are_refused() {
        let auth = Authenticator::from_secret(SECRET).unwrap();
        let expired = auth
            .mint_expiring(
                "alice",
                Role::Customer,
                SystemTime::now() - Duration::from_secs(3600),
            )
            .unwrap();
        assert_eq!(auth.verify(&expired), Err(AuthError::Expired));
        assert!(matches!(
            auth.verify("not.a.token"),
            Err(AuthError::Invalid(_))
        ));
        let other = Authenticator::from_secret(b"another-secret-another-secret-xx")
            .unwrap()
            .mint("alice", Role::Admin, Duration::from_secs(60))
            .unwrap();
        assert!(matches!(auth.verify(&other), Err(AuthError::Invalid(_))));
        // Without a public key, RS256 tokens are not even considered.
        let header = jsonwebtoken::Header::new(Algorithm::RS256);
        let forged = format!(
            "{}.e30.sig",
            base64_url(&serde_json::to_vec(&header).unwrap())
        );
        assert!(matches!(auth.verify(&forged), Err(AuthError::Invalid(_))));
    }

    /// An HS256 token signed with [`SECRET`], with `claims` and `header`.
    fn signed(claims: serde_json::Value, header: Header) -> String {
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let token = |aud: Option<&str>, iss: Option<&str>| {
            let mut claims =
                serde_json::json!({"sub": "alice", "role": "customer", "exp": now() + 60});
            if let Some(aud) = aud {
                claims["aud"] = aud.into();
            }
            if let Some(iss) = iss {
                claims["iss"] = iss.into();
            }
            signed(claims, Header::new(Algorithm::HS256))
        };
        let open = Authenticator::from_secret(SECRET).unwrap();
        assert!(
            open.verify(&token(Some("shop"), None)).is_ok(),
            "any aud without JWT_AUDIENCE"
        );
        let strict = Authenticator::from_secret(SECRET)
            .unwrap()
            .expecting(Expected {
                audience: Some("shop".into()),
                issuer: Some("https://idp.example/realms/shop".into()),
            });
        let iss = Some("https://idp.example/realms/shop");
        assert!(strict.verify(&token(Some("shop"), iss)).is_ok());
        for (aud, iss, why) in [
            (Some("other"), iss, "another audience"),
            (None, iss, "no audience"),
            (Some("shop"), Some("https://evil.example"), "another issuer"),
            (Some("shop"), None, "no issuer"),
        ] {
            assert!(
                matches!(strict.verify(&token(aud, iss)), Err(AuthError::Invalid(_))),
                "{why}"
            );
        }
    }

    #[test]
    fn nbf_is_honoured_with_the_leeway() {
        let auth = Authenticator::from_secret(SECRET).unwrap();
        let token = |nbf: u64| {
            signed(
                serde_json::json!({"sub": "alice", "role": "customer", "exp": now() + 7200, "nbf": nbf}),
                Header::new(Algorithm::HS256),
            )
        };
        assert!(auth.verify(&token(now() + 3600)).is_err(), "an hour ahead");
        assert!(
            auth.verify(&token(now() + LEEWAY_SECONDS - 5)).is_ok(),
            "within the leeway"
        );
        assert!(auth.verify(&token(now() - 60)).is_ok());
    }

    #[test]
    fn a_crit_header_is_refused() {
        let auth = Authenticator::from_secret(SECRET).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp-extension".into()]);
        let token = signed(
            serde_json::json!({"sub": "alice", "role": "customer", "exp": now() + 60}),
            header,
        );
        assert!(matches!(auth.verify(&token), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn a_sub_that_cannot_be_a_customer_id_is_refused() {
        let auth = Authenticator::from_secret(SECRET).unwrap();
        for sub in [
            "al\u{0}ice".to_owned(),
            "a".repeat(129),
            "line\nbreak".into(),
            " ".into(),
        ] {
            let token = signed(
                serde_json::json!({"sub": sub, "role": "customer", "exp": now() + 60}),
                Header::new(Algorithm::HS256),
            );
            assert!(
                matches!(auth.verify(&token), Err(AuthError::Invalid(_))),
                "{sub:?}"
            );
        }
        let longest = auth
            .mint(&"a".repeat(128), Role::Customer, Duration::from_secs(60))
            .unwrap();
        assert!(auth.verify(&longest).is_ok());
    }

    /// A throwaway P-256 key pair, for tests only.
    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQguJqrzzsG/kLs3h9y
1GCwPhIrC3IbulxEHRfmQvAS+kehRANCAATNBsyWElzeb0bL+RQpsMxbyHy7Uz/+
XQK8lAsIUmBB+ind6NR5rPiq2xRXtOE6++7/5V5ccBpT7UEPQMcJByIE
-----END PRIVATE KEY-----
";
    const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEzQbMlhJc3m9Gy/kUKbDMW8h8u1M/
/l0CvJQLCFJgQfop3ejUeaz4qtsUV7ThOvvu/+VeXHAaU+1BD0DHCQciBA==
-----END PUBLIC KEY-----
";

    #[test]
    fn identity_provider_tokens_verify_with_the_public_key_only() {
        let path = Path::new("idp.pem");
        let auth = Authenticator::new(None, Some((path, EC_PUBLIC.as_bytes()))).unwrap();
        let claims = Claims {
            sub: "alice".into(),
            role: Role::Admin,
            exp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 60,
            iat: 0,
        };
        let signed = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(auth.verify(&signed).unwrap().role, Role::Admin);
        // The classic confusion: an HS256 token keyed with the public key.
        let confused = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(EC_PUBLIC.as_bytes()),
        )
        .unwrap();
        assert!(matches!(auth.verify(&confused), Err(AuthError::Invalid(_))));
        assert!(matches!(
            auth.mint("alice", Role::Customer, Duration::from_secs(1)),
            Err(KeyError::CannotSign)
        ));
        assert!(matches!(
            Authenticator::new(None, Some((path, b"not a key".as_slice()))),
            Err(KeyError::BadKey(_))
        ));
    }

    #[test]
    fn short_secrets_are_refused_and_secrets_are_not_printed() {
        assert!(matches!(
            Authenticator::from_secret(b"short"),
            Err(KeyError::ShortSecret)
        ));
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(***)");
    }

    #[test]
    fn the_development_secret_is_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("shop-auth-{}", uuid::Uuid::new_v4()));
        let path = dir.join("dev-jwt-secret");
        let (first, created) = dev_secret(&path).unwrap();
        assert!(created);
        assert!(first.len() >= MIN_SECRET_LEN);
        let (again, created) = dev_secret(&path).unwrap();
        assert_eq!((again, created), (first, false));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bearer_headers_are_parsed_leniently() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }

    fn base64_url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            }
        }
        out
    }
}
