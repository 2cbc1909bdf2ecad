"""The generation pipeline: request -> checks -> prompt encoding -> latents -> denoise -> decode -> save."""
