// Package functions is the Go project of `scripts/bench --deploy` (bench/deploy/README.md).
package functions

import (
	"encoding/json"
	"fmt"
	"net/http"

	"example.com/benchdeploy/greet"
)

// The bench's one-line change rewrites this line (v1 -> v2).
const Version = "v1"

// API (http) answers a small JSON document.
func API(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]string{
		"runtime":  "go",
		"version":  Version,
		"greeting": greet.Hello(r.URL.Query().Get("name")),
	})
}

// Ticker (cron) prints one line.
func Ticker(envs map[string]string) {
	fmt.Println("TICK", Version, len(envs))
}
