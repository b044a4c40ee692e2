"""Data: the embedded dataset, image-folder trees and FFCV files behind one LightningDataModule."""
