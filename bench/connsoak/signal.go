package main

import (
	"os"
	"os/signal"
	"syscall"
)

func signalNotifyFunc(c chan os.Signal) { signal.Notify(c, syscall.SIGTERM, os.Interrupt) }
