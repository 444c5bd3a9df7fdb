// Package functions holds the project's eserveless functions: exported names the manifest lists.
package functions

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"time"
)

// Hello is an http function: a standard http.HandlerFunc. Meta values arrive as ESERVELESS_<KEY>.
func Hello(w http.ResponseWriter, r *http.Request) {
	who := r.URL.Query().Get("name")
	if who == "" {
		who = "world"
	}
	greeting := os.Getenv("ESERVELESS_GREETING")
	if greeting == "" {
		greeting = "Hello"
	}
	fmt.Printf("hello for %s\n", who)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"message": greeting + ", " + who + "!"})
}

// Tick is a cron function: it receives every ESERVELESS_* variable (meta `target` is ESERVELESS_TARGET).
func Tick(envs map[string]string) {
	fmt.Printf("tick for %s at %s\n", envs["ESERVELESS_TARGET"], time.Now().UTC().Format(time.RFC3339))
}
