"""Serving: the chosen ensemble over the backbone (`predictor.Predictor`, behind `roadwork predict`) and
the detector a StreetVision miner plugs in (`detector.RoadworkDetector`)."""
