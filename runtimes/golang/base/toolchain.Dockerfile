# eserveless: the Go toolchain with the standard library compiled as function builds compile
# it (-trimpath, CGO_ENABLED=0), built once per Go image from it and a fixed command alone,
# so every project's build shares it (no project's code ever runs here). The list of what it
# wrote lets a project's cache image hold only the project's own entries.
FROM {{ go_image }}
ENV CGO_ENABLED=0 GOCACHE=/cache/build GOMODCACHE=/cache/mod
RUN go build -trimpath std && find /cache -type f | sort > /std-cache-files
