//! One ACME order: HTTP-01 challenges through the sink, finalize with a fresh key, download the chain.

use std::time::Duration;

use instant_acme::{Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, Order, OrderStatus, RetryPolicy};

use crate::{AcmeError, AcmeSink};

/// How long the server may take to validate the challenges, and then to issue.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// Polls from 250 ms, growing by half each time, for at most [`ORDER_TIMEOUT`].
fn polling() -> RetryPolicy {
    RetryPolicy::new().initial_delay(Duration::from_millis(250)).backoff(1.5).timeout(ORDER_TIMEOUT)
}

/// A certificate just issued.
pub(crate) struct Issued {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
}

/// Orders a certificate for `names`, answering the challenges through `sink`;
/// every challenge set is cleared again before this returns, whatever the outcome.
pub(crate) async fn issue(account: &Account, names: &[String], sink: &dyn AcmeSink) -> Result<Issued, AcmeError> {
    let mut tokens = Vec::new();
    let result = run(account, names, sink, &mut tokens).await;
    for token in &tokens {
        sink.clear_challenge(token);
    }
    result
}

async fn run(account: &Account, names: &[String], sink: &dyn AcmeSink, tokens: &mut Vec<String>) -> Result<Issued, AcmeError> {
    let primary = &names[0];
    let step = |step| move |source| AcmeError::Order { primary: primary.clone(), step, source };
    let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await.map_err(step("new order"))?;

    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(step("fetch authorization"))?;
        let name = authorization.identifier().to_string();
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(AcmeError::Invalid { name, reason: format!("the authorization is {other:?} before any attempt") }),
        }
        let mut challenge = authorization.challenge(ChallengeType::Http01).ok_or_else(|| AcmeError::NoHttp01 { name: name.clone() })?;
        sink.set_challenge(&challenge.token, challenge.key_authorization().as_str());
        tokens.push(challenge.token.clone());
        challenge.set_ready().await.map_err(step("challenge ready"))?;
    }

    match order.poll_ready(&polling()).await.map_err(step("validation"))? {
        OrderStatus::Ready => {}
        _ => return Err(invalid(&mut order, primary).await),
    }
    let key_pem = order.finalize().await.map_err(step("finalize"))?;
    let chain_pem = order.poll_certificate(&polling()).await.map_err(step("download certificate"))?;
    Ok(Issued { chain_pem, key_pem })
}

/// Why the order became invalid: the first failed challenge's error.
async fn invalid(order: &mut Order, primary: &str) -> AcmeError {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        let Ok(state) = authorization.refresh().await else { continue };
        if state.status != AuthorizationStatus::Invalid {
            continue;
        }
        let reason = state
            .challenges
            .iter()
            .find_map(|c| c.error.as_ref())
            .map_or_else(|| "the server marked it invalid and gave no reason".to_string(), |p| p.to_string());
        return AcmeError::Invalid { name: state.identifier().to_string(), reason };
    }
    AcmeError::Invalid { name: primary.to_string(), reason: "the server marked the order invalid".to_string() }
}
