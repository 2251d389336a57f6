"""The paper's workloads: data + model builders."""

from keras_sam.workloads.synthetic import student, teacher_student

__all__ = ["student", "teacher_student"]
