"""Core ML: conversion, INT8/FP16 quantization, the runner and the MIL interpreter (mil/)."""
