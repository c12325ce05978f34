//! A hosts table for tests: names the suite makes up, resolved through the
//! `Resolve` trait, so that no test sends a DNS query.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conpool::BoxFuture;
use conpool::dial::resolve::{Resolve, Resolved};

/// Names to addresses (or to the error a resolver would give), with a
/// count of the lookups made. Clones share the table and the count.
#[derive(Clone, Default)]
pub struct Hosts {
    table: Arc<Mutex<HashMap<String, Result<Resolved, String>>>>,
    lookups: Arc<AtomicUsize>,
    /// How long each lookup takes, on tokio's clock.
    delay: Duration,
}

impl Hosts {
    pub fn new() -> Hosts {
        Hosts::default()
    }

    /// Each lookup takes `delay` (on tokio's clock) before it answers.
    pub fn with_delay(mut self, delay: Duration) -> Hosts {
        self.delay = delay;
        self
    }

    /// `name` resolves to `addrs`, in this order, with no TTL.
    pub fn insert(&self, name: &str, addrs: &[&str]) -> &Self {
        self.insert_answer(name, Ok(Resolved::new(parse(addrs))))
    }

    /// `name` resolves to `addrs` for `ttl`.
    pub fn insert_with_ttl(&self, name: &str, addrs: &[&str], ttl: Duration) -> &Self {
        let answer = Resolved {
            addrs: parse(addrs),
            ttl: Some(ttl),
        };
        self.insert_answer(name, Ok(answer))
    }

    /// A lookup of `name` fails with `words`, as a resolver's NXDOMAIN.
    pub fn fail(&self, name: &str, words: &str) -> &Self {
        self.insert_answer(name, Err(words.to_owned()))
    }

    fn insert_answer(&self, name: &str, answer: Result<Resolved, String>) -> &Self {
        self.table.lock().unwrap().insert(name.to_owned(), answer);
        self
    }

    /// Lookups made so far.
    pub fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }
}

fn parse(addrs: &[&str]) -> Vec<IpAddr> {
    addrs.iter().map(|a| a.parse().unwrap()).collect()
}

impl Resolve for Hosts {
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Resolved>> {
        Box::pin(async move {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            let answer = self.table.lock().unwrap().get(host).cloned();
            match answer {
                Some(Ok(found)) => Ok(found),
                Some(Err(words)) => Err(io::Error::new(io::ErrorKind::NotFound, words)),
                None => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{host} is not in the test's hosts table"),
                )),
            }
        })
    }
}
