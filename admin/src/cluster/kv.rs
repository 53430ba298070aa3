//! The etcd requests the fleet makes, each on the fleet's runtime, bounded
//! and retried by [`Fleet::run`]: reads and watches of a key prefix, puts
//! (optionally bound to a lease), deletions of a prefix, transactions.

use etcd_client::{DeleteOptions, Error, GetOptions, GetResponse, PutOptions, Txn, TxnResponse, WatchOptions, WatchStream};

use super::Fleet;

impl Fleet {
    /// Every key under `prefix`, with the etcd revision it was read at.
    pub(crate) async fn get_prefix(&self, prefix: String) -> Result<GetResponse, Error> {
        let kv = self.client.kv_client();
        self.run(move || {
            let (mut kv, prefix) = (kv.clone(), prefix.clone());
            async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })
        .await
    }

    /// Puts `value` at `key`, bound to `lease` when given.
    pub(crate) async fn put_key(&self, key: String, value: Vec<u8>, lease: Option<i64>) -> Result<(), Error> {
        let kv = self.client.kv_client();
        let options = lease.map(|l| PutOptions::new().with_lease(l));
        self.run(move || {
            let (mut kv, key, value, options) = (kv.clone(), key.clone(), value.clone(), options.clone());
            async move { kv.put(key, value, options).await }
        })
        .await
        .map(drop)
    }

    /// Deletes every key under `prefix`.
    pub(crate) async fn delete_prefix(&self, prefix: String) -> Result<(), Error> {
        let kv = self.client.kv_client();
        self.run(move || {
            let (mut kv, prefix) = (kv.clone(), prefix.clone());
            async move { kv.delete(prefix, Some(DeleteOptions::new().with_prefix())).await }
        })
        .await
        .map(drop)
    }

    /// Watches every key under `prefix` from etcd revision `from` on.
    pub(crate) async fn watch_prefix(&self, prefix: String, from: i64) -> Result<WatchStream, Error> {
        let watch = self.client.watch_client();
        self.run(move || {
            let (mut watch, prefix) = (watch.clone(), prefix.clone());
            async move { watch.watch(prefix, Some(WatchOptions::new().with_prefix().with_start_revision(from))).await }
        })
        .await
    }

    /// One etcd transaction.
    pub(crate) async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        let kv = self.client.kv_client();
        self.run(move || {
            let (mut kv, txn) = (kv.clone(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
    }
}
