// Package greet is the small dependency-free package of the bench's Go project.
package greet

import "strings"

// Hello greets name, or the world when name is empty.
func Hello(name string) string {
	name = strings.TrimSpace(name)
	if name == "" {
		name = "world"
	}
	return "hello " + name
}
