package main

import (
	"fmt"
	"runtime"
)

func main() {
	fmt.Println("execbox smoke ok")
	fmt.Println(runtime.Version())
}
