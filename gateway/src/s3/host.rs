//! Virtual-host style addressing: `bucket.domain[:port]` names the bucket
//! for each configured base domain; any other host (an IP address,
//! `localhost`, a load balancer's name) is path style. (`s3s`'s own
//! parsers read an unknown host as a bucket name, which breaks path-style
//! requests to `127.0.0.1:9000`.)

use s3s::host::{S3Host, VirtualHost};
use s3s::S3Result;

pub struct VirtualHosts {
    domains: Vec<String>,
}

impl VirtualHosts {
    pub fn new(domains: &[String]) -> VirtualHosts {
        VirtualHosts {
            domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
        }
    }

    /// The bucket `host` names, if it is `bucket.<base domain>`.
    pub fn bucket_of<'a>(&self, host: &'a str) -> Option<&'a str> {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        self.domains.iter().find_map(|domain| {
            let bucket = name.strip_suffix(domain.as_str())?.strip_suffix('.')?;
            (!bucket.is_empty()).then_some(bucket)
        })
    }
}

impl S3Host for VirtualHosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let virtual_host = VirtualHost::new(host);
        Ok(match self.bucket_of(host) {
            Some(bucket) => virtual_host.with_bucket(bucket),
            None => virtual_host,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_subdomains_of_base_domains_name_buckets() {
        let hosts = VirtualHosts::new(&["localhost".to_string(), "s3.example.com".to_string()]);
        assert_eq!(hosts.bucket_of("photos.localhost:9000"), Some("photos"));
        assert_eq!(
            hosts.bucket_of("my.dotted.bucket.s3.example.com"),
            Some("my.dotted.bucket")
        );
        for path_style in [
            "localhost:9000",
            "127.0.0.1:9000",
            "s3.example.com",
            "evil-localhost",
            "[::1]:9000",
        ] {
            assert_eq!(hosts.bucket_of(path_style), None, "{path_style}");
        }
    }
}
