//! AcmeSink: the three things the manager asks of the proxy.

/// What the ACME manager needs from the proxy. The manager calls these from
/// its own task; they must not block for long (store and return).
pub trait AcmeSink: Send + Sync + 'static {
    /// Answer `GET /.well-known/acme-challenge/{token}` with
    /// `key_authorization` (plain text) from now on, on every name being
    /// validated, over plain HTTP on port 80. Called before the manager tells
    /// the ACME server the challenge is ready.
    fn set_challenge(&self, token: &str, key_authorization: &str);
    /// Stop answering that token. Called once the order is over, whether it
    /// succeeded or failed.
    fn clear_challenge(&self, token: &str);
    /// Serve this certificate (PEM chain, leaf first; PEM PKCS#8 or SEC1 key)
    /// for `names` from now on. Called at start-up for a good cached
    /// certificate and after each successful order. `Err(reason)` if the proxy
    /// refuses it: the manager then keeps the old one installed (it never
    /// uninstalls), does not cache the new one, and reports the failure.
    fn install(&self, names: &[String], chain_pem: &str, key_pem: &str) -> Result<(), String>;
}
