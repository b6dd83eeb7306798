//! Gateway: S3 HTTP API and NBD export (DESIGN §1). Not built yet (issue 5).
