//! The Pyroscope ingest request (`POST /ingest?name=…&from=…&until=…&format=pprof`,
//! a `multipart/form-data` body with the profile in the `profile` field and
//! how to read its sample types in `sample_type_config`), as Pyroscope's
//! server API documentation describes it. Pure: no I/O.

/// How Pyroscope should read heapscope's four sample types: in-use values
/// are averaged over time, allocations summed; values are already unbiased
/// estimates, so the sampling period must not scale them again.
pub const SAMPLE_TYPE_CONFIG: &str = r#"{
  "alloc_objects": {"units": "objects", "aggregation": "sum", "display-name": "alloc_objects_count", "sampled": false},
  "alloc_space": {"units": "bytes", "aggregation": "sum", "display-name": "alloc_space_bytes", "sampled": false},
  "inuse_objects": {"units": "objects", "aggregation": "average", "display-name": "inuse_objects_count", "sampled": false},
  "inuse_space": {"units": "bytes", "aggregation": "average", "display-name": "inuse_space_bytes", "sampled": false}
}
"#;

/// One request: what goes after the endpoint's base path, and the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestRequest {
    pub path_and_query: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// True for a label name Pyroscope accepts (`[A-Za-z_][A-Za-z0-9_.]*`).
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// A label value or application name with the characters of the name
/// syntax (`{`, `}`, `,`, `=`), quotes and whitespace replaced by `_`.
pub fn sanitize(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:/".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The `name` parameter: `service{k=v,...}`, labels in the given order.
pub fn app_name(service: &str, labels: &[(String, String)]) -> String {
    let body: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", sanitize(v)))
        .collect();
    format!("{}{{{}}}", sanitize(service), body.join(","))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The ingest request of one gzipped pprof profile covering
/// `from_s..until_s` (Unix seconds). `seed` varies the multipart boundary,
/// which is chosen so it occurs in neither part.
pub fn ingest_request(
    name: &str,
    from_s: u64,
    until_s: u64,
    pprof: &[u8],
    seed: u64,
) -> IngestRequest {
    let until_s = until_s.max(from_s + 1);
    let path_and_query = format!(
        "/ingest?name={}&from={from_s}&until={until_s}&format=pprof&spyName=heapscope",
        encode_component(name)
    );
    let mut n = seed;
    let boundary = loop {
        let b = format!("heapscope-boundary-{n:016x}");
        if !contains(pprof, b.as_bytes()) && !SAMPLE_TYPE_CONFIG.contains(&b) {
            break b;
        }
        n = n.wrapping_mul(6364136223846793005).wrapping_add(1);
    };
    let mut body = Vec::with_capacity(pprof.len() + SAMPLE_TYPE_CONFIG.len() + 512);
    let mut part = |field: &str, file: &str, ctype: &str, data: &[u8]| {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; \
                 filename=\"{file}\"\r\nContent-Type: {ctype}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    };
    part(
        "profile",
        "profile.pb.gz",
        "application/octet-stream",
        pprof,
    );
    part(
        "sample_type_config",
        "sample_type_config.json",
        "application/json",
        SAMPLE_TYPE_CONFIG.as_bytes(),
    );
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    IngestRequest {
        path_and_query,
        content_type: format!("multipart/form-data; boundary={boundary}"),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_labels() {
        let labels = vec![
            ("service_name".to_string(), "my app".to_string()),
            ("pid".to_string(), "42".to_string()),
            ("env".to_string(), "a,b{c}=d".to_string()),
        ];
        assert_eq!(
            app_name("my app", &labels),
            "my_app{service_name=my_app,pid=42,env=a_b_c__d}"
        );
        assert!(valid_label_name("service_name"));
        assert!(valid_label_name("k8s.pod"));
        assert!(!valid_label_name("1x"));
        assert!(!valid_label_name("a-b"));
        assert!(!valid_label_name(""));
    }

    #[test]
    fn request_is_a_multipart_form() {
        let r = ingest_request("app{pid=1}", 100, 100, b"\x1f\x8bdata", 7);
        assert_eq!(
            r.path_and_query,
            "/ingest?name=app%7Bpid%3D1%7D&from=100&until=101&format=pprof&spyName=heapscope"
        );
        let boundary = r
            .content_type
            .strip_prefix("multipart/form-data; boundary=")
            .expect("boundary");
        let text = String::from_utf8_lossy(&r.body);
        assert!(text.starts_with(&format!("--{boundary}\r\n")), "{text}");
        assert!(text.ends_with(&format!("--{boundary}--\r\n")), "{text}");
        assert!(text.contains("name=\"profile\""), "{text}");
        assert!(text.contains("name=\"sample_type_config\""), "{text}");
        assert!(text.contains("\"inuse_space\""), "{text}");
        assert_eq!(text.matches(&format!("--{boundary}\r\n")).count(), 2);
    }

    #[test]
    fn boundary_avoids_the_data() {
        let clash = format!("xx heapscope-boundary-{:016x} yy", 7u64);
        let r = ingest_request("a{}", 1, 2, clash.as_bytes(), 7);
        assert!(!r.content_type.ends_with(&format!("{:016x}", 7u64)));
    }

    #[test]
    fn sample_type_config_is_json() {
        let v: serde_json::Value = serde_json::from_str(SAMPLE_TYPE_CONFIG).expect("json");
        assert_eq!(v["inuse_space"]["aggregation"], "average");
        assert_eq!(v["alloc_space"]["units"], "bytes");
    }
}
