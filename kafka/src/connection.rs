//! How a client reaches the brokers: bootstrap servers, TLS, SASL and raw librdkafka options.
//!
//! One [`KafkaConnection`] is flattened into every binary's command line, so the processor, the
//! projector and the CLI take the same flags and environment variables. Secrets (the SASL
//! password, raw options whose names say password, secret or key) never appear in `Debug`
//! output, in `--help` (their environment values are hidden) or in error messages.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context as _;
use rdkafka::config::ClientConfig;

/// A value that must not be shown: `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that hands it to a client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// How the connection to the brokers is secured (librdkafka's `security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    #[default]
    Plaintext,
    /// TLS, no SASL (optionally a client certificate).
    Ssl,
    /// SASL without TLS: the password crosses the network in the clear with PLAIN.
    SaslPlaintext,
    /// SASL over TLS: how managed and most self-hosted clusters are reached.
    SaslSsl,
}

impl SecurityProtocol {
    fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// The SASL mechanism (librdkafka's `sasl.mechanism`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SaslMechanism {
    /// User name and password, sent as they are (use it only over TLS).
    #[value(name = "PLAIN")]
    Plain,
    /// Salted challenge-response with SHA-256.
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response with SHA-512.
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Where the brokers are and how to connect to them. Every flag has an environment fallback.
#[derive(Clone, clap::Args)]
pub struct KafkaConnection {
    /// Kafka bootstrap servers (host:port, comma separated).
    #[arg(long, env = "DURABLE_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// How to connect: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
    #[arg(
        long = "kafka-security-protocol",
        env = "DURABLE_KAFKA_SECURITY_PROTOCOL",
        value_enum,
        default_value = "PLAINTEXT"
    )]
    pub security_protocol: SecurityProtocol,
    /// SASL mechanism with SASL_*: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(long = "kafka-sasl-mechanism", env = "DURABLE_KAFKA_SASL_MECHANISM", value_enum)]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name.
    #[arg(long = "kafka-sasl-username", env = "DURABLE_KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,
    /// SASL password (prefer the environment variable or the password file: a flag's value is
    /// visible in the process list).
    #[arg(long = "kafka-sasl-password", env = "DURABLE_KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub sasl_password: Option<Secret>,
    /// A file holding the SASL password (e.g. a mounted secret); surrounding whitespace is ignored.
    #[arg(
        long = "kafka-sasl-password-file",
        env = "DURABLE_KAFKA_SASL_PASSWORD_FILE",
        conflicts_with = "sasl_password"
    )]
    pub sasl_password_file: Option<PathBuf>,
    /// PEM file of the CA certificates that sign the brokers' certificates (default: the
    /// system's trust store).
    #[arg(long = "kafka-ssl-ca", env = "DURABLE_KAFKA_SSL_CA")]
    pub ssl_ca: Option<PathBuf>,
    /// PEM file of this client's certificate, for brokers that require mutual TLS.
    #[arg(long = "kafka-ssl-certificate", env = "DURABLE_KAFKA_SSL_CERTIFICATE", requires = "ssl_key")]
    pub ssl_certificate: Option<PathBuf>,
    /// PEM file of this client's private key (unencrypted), with --kafka-ssl-certificate.
    #[arg(long = "kafka-ssl-key", env = "DURABLE_KAFKA_SSL_KEY", requires = "ssl_certificate")]
    pub ssl_key: Option<PathBuf>,
    /// Raw librdkafka options as KEY=VALUE, repeatable or comma separated; applied to every
    /// Kafka client last, so they win (e.g. socket.keepalive.enable=true).
    #[arg(long = "kafka-option", env = "DURABLE_KAFKA_OPTIONS", hide_env_values = true, value_delimiter = ',', value_parser = parse_key_value)]
    pub options: Vec<(String, String)>,
}

/// `KEY=VALUE`; an empty item (e.g. `DURABLE_KAFKA_OPTIONS=` in an env file) means no option and
/// parses to an empty key, which the clients skip.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    if s.trim().is_empty() {
        return Ok((String::new(), String::new()));
    }
    // The item may hold a secret: the error does not echo it.
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("a Kafka option is not KEY=VALUE ({} characters, not shown)", s.len()))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

/// Whether a librdkafka option's value is secret (passwords, keys, tokens).
pub fn is_secret_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password")
        || key.contains("secret")
        || key.contains("token")
        || key == "ssl.key.pem"
        || key == "sasl.oauthbearer.config"
        || key == "ssl_key"
        || key.ends_with(".key.pem")
}

impl fmt::Debug for KafkaConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options: Vec<(&str, &str)> = self
            .options
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret_option(k) { "<redacted>" } else { v.as_str() }))
            .collect();
        f.debug_struct("KafkaConnection")
            .field("brokers", &self.brokers)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password)
            .field("sasl_password_file", &self.sasl_password_file)
            .field("ssl_ca", &self.ssl_ca)
            .field("ssl_certificate", &self.ssl_certificate)
            .field("ssl_key", &self.ssl_key)
            .field("options", &options)
            .finish()
    }
}

impl KafkaConnection {
    /// A plaintext connection to `brokers` with no options (tests, `durable dev`).
    pub fn plaintext(brokers: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            sasl_password_file: None,
            ssl_ca: None,
            ssl_certificate: None,
            ssl_key: None,
            options: Vec::new(),
        }
    }

    /// What to tell a user who cannot reach the brokers.
    pub fn unreachable(&self) -> String {
        format!(
            "cannot reach Kafka at {} over {}: is the broker running? set DURABLE_BROKERS (and \
             DURABLE_KAFKA_SECURITY_PROTOCOL / DURABLE_KAFKA_SASL_* for a secured cluster)",
            self.brokers,
            self.security_protocol.as_str().to_ascii_uppercase()
        )
    }

    /// Check the settings that belong together; the error says which variable to set.
    pub fn validate(&self) -> anyhow::Result<()> {
        let protocol = self.security_protocol;
        if protocol.uses_sasl() {
            anyhow::ensure!(
                self.sasl_mechanism.is_some(),
                "{} needs a SASL mechanism: set DURABLE_KAFKA_SASL_MECHANISM (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)",
                protocol.as_str().to_ascii_uppercase()
            );
            anyhow::ensure!(
                self.sasl_username.as_deref().is_some_and(|u| !u.is_empty()),
                "SASL needs a user name: set DURABLE_KAFKA_SASL_USERNAME"
            );
            anyhow::ensure!(
                self.sasl_password.is_some() || self.sasl_password_file.is_some(),
                "SASL needs a password: set DURABLE_KAFKA_SASL_PASSWORD or DURABLE_KAFKA_SASL_PASSWORD_FILE"
            );
        } else {
            anyhow::ensure!(
                self.sasl_mechanism.is_none() && self.sasl_username.is_none(),
                "a SASL mechanism or user name is set but the security protocol is {}: set \
                 DURABLE_KAFKA_SECURITY_PROTOCOL=SASL_SSL",
                protocol.as_str().to_ascii_uppercase()
            );
        }
        if !protocol.uses_tls() {
            anyhow::ensure!(
                self.ssl_ca.is_none() && self.ssl_certificate.is_none(),
                "TLS files are set but the security protocol is {}: set DURABLE_KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL",
                protocol.as_str().to_ascii_uppercase()
            );
        }
        for path in [&self.ssl_ca, &self.ssl_certificate, &self.ssl_key].into_iter().flatten() {
            anyhow::ensure!(path.is_file(), "{} does not exist or is not a file (DURABLE_KAFKA_SSL_*)", path.display());
        }
        Ok(())
    }

    /// The SASL password, from the flag or the file.
    fn password(&self) -> anyhow::Result<Option<Secret>> {
        if let Some(p) = &self.sasl_password {
            return Ok(Some(p.clone()));
        }
        let Some(path) = &self.sasl_password_file else { return Ok(None) };
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("cannot read the SASL password file {} (DURABLE_KAFKA_SASL_PASSWORD_FILE)", path.display())
        })?;
        Ok(Some(Secret::new(text.trim())))
    }

    /// A client configuration: the brokers and security settings, then `settings`, then the raw
    /// options (last, so they win).
    pub fn client_config(&self, settings: &[(&str, &str)]) -> anyhow::Result<ClientConfig> {
        self.validate()?;
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set("security.protocol", self.security_protocol.as_str());
        if let Some(m) = self.sasl_mechanism {
            c.set("sasl.mechanism", m.as_str());
        }
        if let Some(u) = &self.sasl_username {
            c.set("sasl.username", u);
        }
        if let Some(p) = self.password()? {
            c.set("sasl.password", p.expose());
        }
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        if let Some(ca) = &self.ssl_ca {
            c.set("ssl.ca.location", path(ca));
        }
        if let Some(cert) = &self.ssl_certificate {
            c.set("ssl.certificate.location", path(cert));
        }
        if let Some(key) = &self.ssl_key {
            c.set("ssl.key.location", path(key));
        }
        for (k, v) in settings {
            c.set(*k, *v);
        }
        for (k, v) in self.options.iter().filter(|(k, _)| !k.is_empty()) {
            c.set(k, v);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaConnection,
    }

    #[test]
    fn debug_output_redacts_the_password_and_secret_options() {
        let cli = Cli::try_parse_from([
            "x",
            "--kafka-security-protocol",
            "SASL_SSL",
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-512",
            "--kafka-sasl-username",
            "svc",
            "--kafka-sasl-password",
            "hunter2-very-secret",
            "--kafka-option",
            "ssl.key.password=also-secret,socket.keepalive.enable=true",
        ])
        .expect("parses");
        let shown = format!("{:?}", cli.kafka);
        assert!(!shown.contains("hunter2-very-secret"), "{shown}");
        assert!(!shown.contains("also-secret"), "{shown}");
        assert!(shown.contains("socket.keepalive.enable") && shown.contains("svc"), "{shown}");
        let config = cli.kafka.client_config(&[]).expect("valid");
        assert_eq!(config.get("sasl.password"), Some("hunter2-very-secret"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
    }

    #[test]
    fn sasl_without_a_password_is_refused_with_what_to_set() {
        let cli = Cli::try_parse_from([
            "x",
            "--kafka-security-protocol",
            "SASL_SSL",
            "--kafka-sasl-mechanism",
            "PLAIN",
            "--kafka-sasl-username",
            "svc",
        ])
        .expect("parses");
        let err = cli.kafka.client_config(&[]).expect_err("no password").to_string();
        assert!(err.contains("DURABLE_KAFKA_SASL_PASSWORD"), "{err}");
    }

    #[test]
    fn a_malformed_option_does_not_echo_its_value() {
        let err = parse_key_value("sasl.password:hunter2").expect_err("no =");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn raw_options_come_last_and_win() {
        let mut k = KafkaConnection::plaintext("b:1");
        k.options.push(("linger.ms".into(), "7".into()));
        let c = k.client_config(&[("linger.ms", "0")]).expect("valid");
        assert_eq!(c.get("linger.ms"), Some("7"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:1"));
    }
}
