-- wrk script for the upload shape of bench/run.sh: every request POSTs a 1 MiB body.
wrk.method = "POST"
wrk.path = "/upload"
wrk.body = string.rep("x", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
