"""ncnn: conversion with pnnx and the runner."""
