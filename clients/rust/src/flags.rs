//! Command-line flags shared by the binaries (`rank`, `loadgen`).

use std::ffi::OsString;
use std::path::PathBuf;

use crate::client::TlsConfig;

/// The `--tls-*` flags, with the same names and environment variables as the Python client's.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsFlags {
    /// PEM CA that signed the server's certificate; implies TLS [https:// without it: the
    /// system's roots]
    #[arg(long, env = "PHOENIX_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<OsString>,

    /// PEM client certificate, for mutual TLS (with --tls-key); implies TLS
    #[arg(long, env = "PHOENIX_TLS_CLIENT_CERT", value_name = "PATH")]
    pub tls_cert: Option<OsString>,

    /// PEM key of --tls-cert
    #[arg(long, env = "PHOENIX_TLS_CLIENT_KEY", value_name = "PATH")]
    pub tls_key: Option<OsString>,

    /// Name to verify the server's certificate against; implies TLS [default: the target's host]
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

impl TlsFlags {
    /// The TLS these flags ask for; `None` (plaintext unless the target is https://) when none
    /// is given. An empty value (e.g. `PHOENIX_TLS_CA=`) is not given, as in the Python client.
    pub fn config(&self) -> Option<TlsConfig> {
        let path = |v: &Option<OsString>| v.as_ref().filter(|v| !v.is_empty()).map(PathBuf::from);
        TlsConfig::from_flags(
            path(&self.tls_ca),
            path(&self.tls_cert),
            path(&self.tls_key),
            self.tls_server_name.clone().filter(|v| !v.is_empty()),
        )
    }
}
