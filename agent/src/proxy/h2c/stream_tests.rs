use hyper::Uri;

use super::uri_len;

#[test]
fn uri_len_is_the_length_of_the_written_uri() {
    for uri in [
        "http://reviews.shop.svc:9085/api/v1/items?page=2&q=%20x",
        "http://reviews.shop.svc/",
        "https://a.b/c",
        "/only/a/path",
        "/path?query",
        "*",
        "reviews.shop.svc:9085",
        "/grpc.health.v1.Health/Check",
    ] {
        let parsed: Uri = uri.parse().expect(uri);
        assert_eq!(uri_len(&parsed), parsed.to_string().len(), "{uri}");
    }
}
